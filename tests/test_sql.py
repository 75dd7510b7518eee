"""`bitware_core.sql.insert_rows` writes rows that SQLAlchemy's ORM reads back as given: JSON
columns, datetimes, and the model's defaults for the columns a row leaves out."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from bitware_core.db import Database
from bitware_core.sql import insert_rows
from granulator_server import models


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
