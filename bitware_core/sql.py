"""Hand-written SQL for the hot path (claim, accept, progress, result, the event log, requests,
jobs): `Tx`, one transaction on the driver's own connection (sqlite3 or psycopg), and helpers
that read and write model rows through it so that SQLAlchemy's ORM reads them the same.

Why: SQLAlchemy's per-statement machinery costs far more than SQLite itself. A 5-statement
transaction measured 0.08 ms through sqlite3, 1.0 ms through Core and 2–3.5 ms through the ORM
(docs/PERFORMANCE.md). The schema, migrations and every query off the hot path stay with
SQLAlchemy; `bitware_core.db.Database.run_tx` runs a `Tx`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, Boolean, DateTime
from sqlalchemy.orm import Session, configure_mappers

Info = dict[str, Any]
M = TypeVar("M")

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Tx:
    """One transaction on the driver's own connection (sqlite3 or psycopg), for SQL written by
    hand. Parameters are named (`:name`) on both; values go in through `ts` and `json`, and JSON
    comes out through `loads`, so that rows read the same through SQLAlchemy's ORM."""

    def __init__(self, connection: Any, postgres: bool, info: Info | None = None) -> None:
        self._connection = connection
        self.postgres = postgres
        #: Handed to the database's `on_commit` callbacks once the transaction commits.
        self.info: Info = {} if info is None else info

    @classmethod
    def of(cls, session: Session) -> Tx:
        """The transaction a session is in, for hand-written SQL beside its ORM work (pending ORM
        changes are not flushed first)."""
        connection = session.connection()
        postgres = connection.dialect.name == "postgresql"
        return cls(connection.connection.driver_connection, postgres, session.info)

    def _sql(self, sql: str) -> str:
        if not self.postgres:
            return sql  # sqlite3 takes :name itself
        converted = _PG_SQL.get(sql)
        if converted is None:
            converted = _NAMED.sub(r"%(\1)s", sql)
            if len(_PG_SQL) < PG_SQL_KEPT:  # IN lists of varying length make new texts
                _PG_SQL[sql] = converted
        return converted

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        cursor = self._connection.cursor()
        cursor.execute(self._sql(sql), params or {})
        return cursor

    def many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._connection.cursor().executemany(self._sql(sql), rows)

    def insert_values(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Inserts `rows` (each its values in `columns`' order, converted with `ts`/`json`
        already) with one multi-row INSERT per `INSERT_CHUNK` rows and positional parameters:
        on SQLite ~15 % less CPU than `many` with named ones for a job's 69 element rows."""
        mark = "%s" if self.postgres else "?"
        one = f"({', '.join([mark] * len(columns))})"
        head = f"INSERT INTO {table} ({', '.join(map(_quoted, columns))}) VALUES "
        cursor = self._connection.cursor()
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            values = [value for row in chunk for value in row]
            cursor.execute(head + ", ".join([one] * len(chunk)), values)

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        """The first row (a tuple), or None."""
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Any]:
        rows: list[Any] = self.execute(sql, params).fetchall()
        return rows

    def lock(self, clause: str = "") -> str:
        """`FOR UPDATE [clause]` on PostgreSQL; nothing on SQLite, where the one writer holds the
        whole database."""
        return f" FOR UPDATE {clause}" if self.postgres else ""

    def ts(self, value: datetime | None) -> Any:
        """A naive UTC datetime as the column stores it (SQLAlchemy's text form on SQLite)."""
        if value is None or self.postgres:
            return value
        return value.isoformat(" ", "microseconds")

    def json(self, value: Any) -> Any:
        if self.postgres:
            from psycopg.types.json import Json

            return Json(value)
        return dumps(value)

    @staticmethod
    def loads(value: Any) -> Any:
        """A JSON column's value: text on SQLite, already decoded on PostgreSQL."""
        return json.loads(value) if isinstance(value, str) else value

    @staticmethod
    def when(value: Any) -> datetime | None:
        """A datetime column's value: text on SQLite, a datetime on PostgreSQL."""
        return datetime.fromisoformat(value) if isinstance(value, str) else value


def _c_encoder() -> Any:
    """`json.dumps`'s own C encoder with its default settings, made once (`json.dumps` makes one
    per call, most of the cost of a small value); None where the C module is missing."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    # No circular-reference check (the markers dict would be shared between threads): a
    # circular value, which JSON data never is, raises RecursionError instead of ValueError.
    separators = (": ", ", ")
    default = json.JSONEncoder().default
    return make(
        None, default, json.encoder.encode_basestring_ascii, None, *separators, False, False, True
    )


_ENCODE = _c_encoder()


def dumps(value: Any) -> str:
    """`json.dumps(value)`, the same text, ~4× faster for a small value."""
    if _ENCODE is None:
        return json.dumps(value)
    return "".join(_ENCODE(value, 0))


#: Rows per statement of `Tx.insert_values`: SQLite takes up to 32,766 parameters a statement,
#: PostgreSQL 65,535; a few hundred rows of a few columns stay far below both.
INSERT_CHUNK = 500

#: Statement texts converted to psycopg's parameter style, kept up to PG_SQL_KEPT of them.
_PG_SQL: dict[str, str] = {}
PG_SQL_KEPT = 512


@dataclass(frozen=True)
class _Shape:
    """How a model's rows go through hand-written SQL: its columns and which need converting."""

    table: str
    key: str
    columns: tuple[str, ...]
    json: frozenset[str]
    times: frozenset[str]
    flags: frozenset[str]
    defaults: dict[str, Any]


_SHAPES: dict[type, _Shape] = {}


def _shape(model: type) -> _Shape:
    shape = _SHAPES.get(model)
    if shape is None:
        configure_mappers()  # so that `_model_row` objects have working attributes
        table = model.__table__  # type: ignore[attr-defined]
        kinds = {c.name: type(c.type) for c in table.columns}
        defaults = {c.name: c.default.arg for c in table.columns if c.default is not None}
        shape = _SHAPES[model] = _Shape(
            table=table.name,
            key=next(iter(table.primary_key.columns)).name,
            columns=tuple(kinds),
            json=frozenset(n for n, k in kinds.items() if issubclass(k, JSON)),
            times=frozenset(n for n, k in kinds.items() if issubclass(k, DateTime)),
            flags=frozenset(n for n, k in kinds.items() if issubclass(k, Boolean)),
            defaults=defaults,
        )
    return shape


def _out(tx: Tx, shape: _Shape, name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in shape.json:
        return tx.loads(value)
    if name in shape.times:
        return tx.when(value)
    if name in shape.flags:
        return bool(value)
    return value


def _in(tx: Tx, shape: _Shape, name: str, value: Any) -> Any:
    if name in shape.json:
        return tx.json(value)
    if name in shape.times:
        return tx.ts(value)
    return value


def _quoted(name: str) -> str:
    return f'"{name}"'


def _model_row(model: type[M], values: dict[str, Any]) -> M:
    """A model object holding `values`, made without the constructor's per-attribute
    instrumentation (~5 µs instead of ~80 µs for a wide row); attributes work as usual."""
    row: M = model._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    row.__dict__.update(values)
    return row


_COLUMNS: dict[tuple[type, str], str] = {}


def columns(model: type, alias: str = "") -> str:
    """The model's columns for a SELECT list (`alias."col"`), in the order `from_row` reads."""
    listed = _COLUMNS.get((model, alias))
    if listed is None:
        prefix = f"{alias}." if alias else ""
        listed = _COLUMNS[model, alias] = ", ".join(
            prefix + _quoted(n) for n in _shape(model).columns
        )
    return listed


def width(model: type) -> int:
    """How many values of a row `columns(model)` selects."""
    return len(_shape(model).columns)


def from_row(tx: Tx, model: type[M], values: Sequence[Any]) -> M:
    """A model object from the values `columns(model)` selected."""
    shape = _shape(model)
    return _model_row(
        model, {n: _out(tx, shape, n, v) for n, v in zip(shape.columns, values, strict=True)}
    )


def select_rows(
    tx: Tx,
    model: type[M],
    where: str,
    params: Mapping[str, Any] | None = None,
    lock: str = "",
    only: tuple[str, ...] = (),
) -> list[M]:
    """Rows of `model` (as detached model objects) `WHERE <where>`, with SQL by hand; `lock` is
    a `Tx.lock` clause. With `only`, just those columns are read (and converted): the objects
    lack the others, so only code that reads nothing else may be given them."""
    shape = _shape(model)
    if not only:
        rows = tx.all(f"SELECT {columns(model)} FROM {shape.table} WHERE {where}{lock}", params)
        return [from_row(tx, model, row) for row in rows]
    listed = ", ".join(map(_quoted, only))
    rows = tx.all(f"SELECT {listed} FROM {shape.table} WHERE {where}{lock}", params)
    return [
        _model_row(model, {n: _out(tx, shape, n, v) for n, v in zip(only, row, strict=True)})
        for row in rows
    ]


def update_row(tx: Tx, row: Any, *columns: str) -> None:
    """Writes the named attributes of a model object back to its row."""
    shape = _shape(type(row))
    sets = ", ".join(f"{_quoted(n)} = :{n}" for n in columns)
    values = {n: _in(tx, shape, n, getattr(row, n)) for n in columns}
    values["_key"] = getattr(row, shape.key)
    tx.execute(f"UPDATE {shape.table} SET {sets} WHERE {_quoted(shape.key)} = :_key", values)


def _default(shape: _Shape, name: str) -> Any:
    default = shape.defaults.get(name)
    return default(None) if callable(default) else default  # SQLAlchemy passes a context


def new_row(model: type[M], **values: Any) -> M:
    """A new model object with the model's defaults filled in, as its row will read."""
    shape = _shape(model)
    for name in shape.defaults.keys() - values.keys():
        values[name] = _default(shape, name)
    return _model_row(model, values)


def values_of(row: Any) -> dict[str, Any]:
    """The attributes set on a model object that is not in a session, for `insert_rows`."""
    return {k: v for k, v in vars(row).items() if not k.startswith("_")}


def insert_rows(tx: Tx, model: type, rows: Sequence[Mapping[str, Any]]) -> None:
    """Inserts rows of `model` given as dicts; columns left out get the model's defaults."""
    if not rows:
        return
    shape = _shape(model)
    given = set().union(*rows)
    names = [n for n in shape.columns if n in given or n in shape.defaults]
    # Only the columns that need it are converted (a job's ~70 element rows go through here).
    encoded = [n for n in names if n in shape.json]
    stamped = [n for n in names if n in shape.times]
    prepared = []
    for row in rows:
        values = {n: row[n] if n in row else _default(shape, n) for n in names}
        for n in encoded:
            values[n] = tx.json(values[n])
        for n in stamped:
            values[n] = tx.ts(values[n])
        prepared.append(values)
    columns = ", ".join(map(_quoted, names))
    placeholders = ", ".join(f":{n}" for n in names)
    tx.many(f"INSERT INTO {shape.table} ({columns}) VALUES ({placeholders})", prepared)
