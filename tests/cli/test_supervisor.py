"""What `bitware up` does to a data folder before it starts the servers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bitware_core.supervisor import adopt_old_granulator_store


def _store(path: Path, job_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE jobs (id TEXT)")
        connection.execute("INSERT INTO jobs VALUES (?)", (job_id,))
    connection.close()


def test_the_first_granulators_own_store_becomes_the_shared_one(tmp_path: Path) -> None:
    _store(tmp_path / "granulator-1" / "granulator.db", "job_first")
    _store(tmp_path / "granulator-2" / "granulator.db", "job_second")

    said = adopt_old_granulator_store(tmp_path)

    assert said.startswith("moved granulator-1/granulator.db to granulator.db")
    assert said.endswith("not carried over: granulator-2/granulator.db")
    assert not (tmp_path / "granulator-1" / "granulator.db").exists()
    with sqlite3.connect(tmp_path / "granulator.db") as connection:
        assert connection.execute("SELECT id FROM jobs").fetchall() == [("job_first",)]
    connection.close()
    assert adopt_old_granulator_store(tmp_path) == ""  # once only


def test_an_existing_shared_store_is_left_alone(tmp_path: Path) -> None:
    _store(tmp_path / "granulator.db", "job_shared")
    _store(tmp_path / "granulator-1" / "granulator.db", "job_old")
    assert adopt_old_granulator_store(tmp_path) == ""
    assert (tmp_path / "granulator-1" / "granulator.db").exists()
    assert adopt_old_granulator_store(tmp_path / "empty") == ""
