"""`bitware_core.sql.insert_rows` and `Tx.insert_values` write rows that SQLAlchemy's ORM reads
back as given: JSON columns, datetimes, the model's defaults for the columns a row leaves out
(insert_rows), every row in order across several statements (insert_values)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bitware_core import sql
from bitware_core.db import Database
from bitware_core.sql import insert_rows
from granulator_server import jobs, models


def test_inserted_rows_read_back_through_the_orm(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'sql.db'}")
    db.migrate("granulator", "granulator_server/migrations", models.GranulatorBase.metadata)
    when = datetime(2026, 11, 30, 7, 1, 2, 345678)
    job = {
        "id": "job-1",
        "client_id": "c",
        "execution_id": "ex",
        "stage_id": "s",
        "attempt": 1,
        "action": "generate",
        "spec": {"topic": "Ünïcode", "granularity": 3},
        "structure_type": "course",
        "template_name": "course",
        "created_at": when,
    }
    elements = [
        {"job_id": "job-1", "position": 0, "parent_position": -1, "kind": "course", "order": 0,
         "title": "T", "payload": {"summary": "s", "tags": [1, None, True]}},
        {"job_id": "job-1", "position": 1, "parent_position": 0, "kind": "module", "order": 0,
         "title": "M"},
    ]  # fmt: skip
    try:
        db.run_tx_sync(lambda tx: insert_rows(tx, models.Job, [job]))
        db.run_tx_sync(lambda tx: insert_rows(tx, models.Element, elements))
        stored = db.run_sync(lambda s: s.get(models.Job, "job-1"))
        assert stored is not None
        assert stored.spec == job["spec"] and stored.created_at == when
        assert (stored.status, stored.document, stored.validations) == ("running", {}, [])
        assert isinstance(stored.updated_at, datetime)
        rows = db.run_sync(
            lambda s: list(s.scalars(select(models.Element).order_by(models.Element.position)))
        )
        assert [(r.title, r.payload) for r in rows] == [("T", elements[0]["payload"]), ("M", {})]
    finally:
        db.close()


def _read_back(url: str, rows: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    monkeypatch.setattr(sql, "INSERT_CHUNK", 7)  # several statements, the last one short
    db = Database(url)
    db.migrate("granulator", "granulator_server/migrations", models.GranulatorBase.metadata)
    job = {"id": "job-1", "client_id": "c", "execution_id": "ex", "stage_id": "s",
           "attempt": 1, "action": "generate", "spec": {}, "structure_type": "course",
           "template_name": "course"}  # fmt: skip
    try:
        db.run_tx_sync(lambda tx: insert_rows(tx, models.Job, [job]))
        db.run_tx_sync(
            lambda tx: tx.insert_values(
                "elements",
                jobs.ELEMENT_COLUMNS,
                [
                    ("job-1", i, i - 1, "lesson", i, f"title {i} 'quoted' %s", tx.json({"n": i}))
                    for i in range(rows)
                ],
            )
        )
        stored = db.run_sync(
            lambda s: list(s.scalars(select(models.Element).order_by(models.Element.id)))
        )
        return [(e.position, e.parent_position, e.order, e.title, e.payload) for e in stored]
    finally:
        db.close()


def _expected(rows: int) -> list[tuple[Any, ...]]:
    return [(i, i - 1, i, f"title {i} 'quoted' %s", {"n": i}) for i in range(rows)]


def test_insert_values_writes_every_row_in_order_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'sql.db'}"
    assert _read_back(url, 30, monkeypatch) == _expected(30)


def test_insert_values_writes_every_row_in_order_on_postgres(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _read_back(postgres_url, 30, monkeypatch) == _expected(30)


def test_a_job_s_element_rows_fill_every_column_but_the_id() -> None:
    # A new element column would be left to the database: insert_values applies no model default.
    assert set(jobs.ELEMENT_COLUMNS) == {c.name for c in models.Element.__table__.columns} - {"id"}


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        "plain",
        'quotes " and \\ and \n and ünïcødé ✓ 𝄞',
        {"a": 1, "b": [1.5, -0.0, 1e300, float("nan"), float("inf"), True, None], "c": {}},
        {3: "int key", 2.5: "float key", False: "bool key", None: "none key"},
        [{"nested": [{"deep": ["x" * 3000]}]}],
        12345678901234567890,
    ],
)
def test_dumps_writes_what_json_dumps_writes(value: Any) -> None:
    assert sql.dumps(value) == json.dumps(value)


def test_dumps_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        sql.dumps({"when": datetime(2026, 11, 30)})
