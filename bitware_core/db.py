"""Each service's own database through SQLAlchemy 2: SQLite files by default, PostgreSQL by URL.

Domain logic is plain synchronous code that takes a `Session`; `Database.run` executes it in one
transaction on a small thread pool so that the asyncio servers never block on the database.
SQLite gets a single writer thread (it allows one writer at a time anyway) in WAL mode.

The per-stage hot path (claim, accept, progress, result, the event log) takes a `Tx` instead:
hand-written SQL on the driver's own connection, run by `Database.run_tx`. SQLAlchemy's
per-statement machinery costs far more than SQLite itself (a 5-statement transaction: 0.08 ms
raw, 1.0 ms Core, 2–3.5 ms ORM; see docs/PERFORMANCE.md), and the schema, migrations and every
other query stay with SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    exc,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, configure_mappers, sessionmaker

from bitware_core.errors import Violations

T = TypeVar("T")
Info = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    """A short, time-ordered, unguessable id such as `req_18c1f2a3b4c_9f2e1d0c4b5a`."""
    return f"{prefix}_{int(time.time() * 1000):x}_{secrets.token_hex(6)}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


#: A pooled PostgreSQL connection idle longer than this is checked with `SELECT 1` before use.
IDLE_PING_SECONDS = 10.0
#: PostgreSQL connections are replaced after this long (before any server or proxy idle cut).
POOL_RECYCLE_SECONDS = 1800


def _mark_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect check, but only for a connection that sat idle in the pool: one
    that was in use a moment ago is alive, so a busy server pays no extra round trip. A dead
    connection raises DisconnectionError and the pool retries with a fresh one."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception as error:
        raise exc.DisconnectionError(f"pooled connection is gone: {error}") from error


_REVISION = re.compile(r"^revision(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def _script_head(script_location: str) -> str | None:
    """The single head revision of a service's migrations, read from the revision files
    without importing Alembic; None when that is not clear-cut (then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(script_location) / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


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
            converted = _PG_SQL[sql] = _NAMED.sub(r"%(\1)s", sql)
        return converted

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        cursor = self._connection.cursor()
        cursor.execute(self._sql(sql), params or {})
        return cursor

    def many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self._connection.cursor().executemany(self._sql(sql), rows)

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
        return json.dumps(value)

    @staticmethod
    def loads(value: Any) -> Any:
        """A JSON column's value: text on SQLite, already decoded on PostgreSQL."""
        return json.loads(value) if isinstance(value, str) else value

    @staticmethod
    def when(value: Any) -> datetime | None:
        """A datetime column's value: text on SQLite, a datetime on PostgreSQL."""
        return datetime.fromisoformat(value) if isinstance(value, str) else value


_PG_SQL: dict[str, str] = {}
M = TypeVar("M")


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
        configure_mappers()  # so that `model_row` objects have working attributes
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


def model_row(model: type[M], values: dict[str, Any]) -> M:
    """A model object holding `values`, made without the constructor's per-attribute
    instrumentation (~5 µs instead of ~80 µs for a wide row); attributes work as usual."""
    row: M = model._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    row.__dict__.update(values)
    return row


def select_rows(
    tx: Tx, model: type[M], where: str, params: Mapping[str, Any] | None = None, lock: str = ""
) -> list[M]:
    """Rows of `model` (as detached model objects) `WHERE <where>`, with SQL by hand; `lock` is
    a `Tx.lock` clause."""
    shape = _shape(model)
    columns = ", ".join(map(_quoted, shape.columns))
    rows = tx.all(f"SELECT {columns} FROM {shape.table} WHERE {where}{lock}", params)
    return [
        model_row(
            model, {n: _out(tx, shape, n, v) for n, v in zip(shape.columns, row, strict=True)}
        )
        for row in rows
    ]


def update_row(tx: Tx, row: Any, *columns: str) -> None:
    """Writes the named attributes of a model object back to its row."""
    shape = _shape(type(row))
    sets = ", ".join(f"{_quoted(n)} = :{n}" for n in columns)
    values = {n: _in(tx, shape, n, getattr(row, n)) for n in columns}
    values["_key"] = getattr(row, shape.key)
    tx.execute(f"UPDATE {shape.table} SET {sets} WHERE {_quoted(shape.key)} = :_key", values)


def new_row(model: type[M], **values: Any) -> M:
    """A new model object with the model's defaults filled in, as its row will read."""
    for name, default in _shape(model).defaults.items():
        if name not in values:
            values[name] = default(None) if callable(default) else default
    return model_row(model, values)


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
    prepared = []
    for row in rows:
        values = {}
        for n in names:
            if n in row:
                value = row[n]
            else:
                default = shape.defaults.get(n)
                value = default(None) if callable(default) else default
            values[n] = _in(tx, shape, n, value)
        prepared.append(values)
    columns = ", ".join(map(_quoted, names))
    placeholders = ", ".join(f":{n}" for n in names)
    tx.many(f"INSERT INTO {shape.table} ({columns}) VALUES ({placeholders})", prepared)


class Database:
    """An engine plus the thread pool that runs units of work against it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # No pool_pre_ping: it costs a round trip on every checkout, i.e. every transaction.
            # Connections are recycled after POOL_RECYCLE_SECONDS, pinged only after sitting
            # idle (`_ping_if_idle`), and a disconnect met mid-use invalidates the whole pool,
            # so the next transaction reconnects.
            self.engine = create_engine(
                url, pool_size=10, max_overflow=10, pool_recycle=POOL_RECYCLE_SECONDS
            )
            event.listen(self.engine, "checkin", _mark_idle)
            event.listen(self.engine, "checkout", _ping_if_idle)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="db"
        )
        self._tx_committed: list[Callable[[Info], None]] = []

    def libpq_url(self) -> str:
        """The URL without SQLAlchemy's driver suffix, for a plain psycopg connection."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Runs start-up work (migrations, seeding) one process at a time when several share a
        PostgreSQL database (two granulators starting together would both seed); a no-op on
        SQLite, where each process has its own file."""
        if self.is_sqlite:
            yield
            return
        key = zlib.crc32(name.encode())
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    def migrate(self, service: str, script_location: str, metadata: MetaData) -> None:
        """Brings the schema to the newest Alembic revision of `service` (each service keeps its
        own version table, so several services may share one PostgreSQL database).

        Alembic (~0.3 s of start-up to import and run) runs only when there is something to
        upgrade: a database already at the head is left alone, and one that has none of the
        service's tables yet gets them straight from `metadata` and is stamped at the head, as
        Alembic's own documentation suggests for new databases. `tests/e2e/test_migrations.py`
        checks that the models and the migrations describe the same schema."""
        head = _script_head(script_location)
        table = f"alembic_version_{service}"
        with self.engine.begin() as connection:
            present = set(inspect(connection).get_table_names())
            if head is not None and table in present:
                stored = connection.execute(text(f"SELECT version_num FROM {table}")).scalars()
                if list(stored) == [head]:
                    return
            if head is not None and not present & ({table} | set(metadata.tables)):
                metadata.create_all(connection)
                version = Table(
                    table,
                    MetaData(),
                    Column("version_num", String(32), nullable=False),
                    PrimaryKeyConstraint("version_num", name=f"{table}_pkc"),
                )
                version.create(connection)
                connection.execute(version.insert().values(version_num=head))
                return
        import alembic.command
        import alembic.config

        config = alembic.config.Config()
        config.set_main_option("script_location", script_location)
        config.set_main_option("version_table", table)
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            alembic.command.upgrade(config, "head")

    def on_commit(self, callback: Callable[[Info], None]) -> None:
        """Calls `callback(info)` on the database thread after each transaction commits, with
        the `info` of its session or `Tx`."""
        event.listen(self._sessions, "after_commit", lambda session: callback(session.info))
        self._tx_committed.append(callback)

    def run_sync(self, work: Callable[[Session], T]) -> T:
        with self._sessions.begin() as session:
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Runs `work(session)` in one transaction, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, work)

    def run_tx_sync(self, work: Callable[[Tx], T]) -> T:
        pooled = self.engine.raw_connection()
        try:
            tx = Tx(pooled.driver_connection, not self.is_sqlite)
            result = work(tx)
            pooled.commit()
        except BaseException:
            pooled.rollback()
            raise
        finally:
            pooled.close()
        for callback in self._tx_committed:
            callback(tx.info)
        return result

    async def run_tx(self, work: Callable[[Tx], T]) -> T:
        """Runs `work(tx)` in one transaction of hand-written SQL, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_tx_sync, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def run_migrations(metadata: MetaData) -> None:
    """The body of every service's Alembic `env.py`: online migrations on the connection that
    `Database.migrate` passes in (or a URL, for `alembic revision --autogenerate`)."""
    from alembic import context as alembic_context

    config = alembic_context.config
    version_table = config.get_main_option("version_table") or "alembic_version"
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
        connection = engine.connect()
    alembic_context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=True,  # SQLite can only alter tables by copying them
    )
    with alembic_context.begin_transaction():
        alembic_context.run_migrations()


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_window(page_size: int, page_token: str) -> tuple[int, int]:
    """Validates paging input and returns (offset, limit)."""
    problems = Violations()
    problems.check(page_size >= 0, "page_size", "must not be negative")
    offset = 0
    if page_token:
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(page_token.encode()))["o"])
        except (ValueError, KeyError, TypeError):
            problems.add("page_token", "is not a token this server issued")
    problems.raise_if_any()
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return offset, limit


def next_page_token(offset: int, limit: int, returned: int) -> str:
    """The token for the page after one that returned `returned` of `limit` rows (one extra row
    is fetched to know whether there is more)."""
    if returned <= limit:
        return ""
    return base64.urlsafe_b64encode(json.dumps({"o": offset + limit}).encode()).decode()
