"""`EventHub.follow`, what a WatchExecution stream sends, without a server: an execution's log
after a sequence number, history first and then live, in order and without gaps, ending with a
finished execution; events it was not handed (another replica's, a gap, a lost notification)
are read from the database. The stream itself is tested in test_events.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import Database
from bitware_core.domain import PipelineTemplate
from bitware_core.errors import InvalidArgument
from bitware_core.sql import Tx
from orchestrator_server import executions, models
from orchestrator_server.errors import ExecutionNotFound
from orchestrator_server.events import EventHub
from orchestrator_server.executions import APPENDED, LoggedEvent
from tests.common import eventually
from tests.orchestrator.conftest import stage

MIGRATIONS = str(Path(executions.__file__).parent / "migrations")
ADMIN = Principal(kind="user", role="admin")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'orchestrator.db'}")
    database.migrate("orchestrator", MIGRATIONS, models.OrchestratorBase.metadata)
    return database


def committed_events(db: Database) -> list[LoggedEvent]:
    """The events each transaction commits, in order (as the server's commit hook sees them)."""
    seen: list[LoggedEvent] = []
    db.on_commit(lambda info: seen.extend(info.pop(APPENDED, [])))
    return seen


def publish_on_commit(db: Database, hub: EventHub) -> None:
    """What OrchestratorServer does: hands committed events to the hub on the event loop."""
    loop = asyncio.get_running_loop()

    def committed(info: dict[str, Any]) -> None:
        if events := info.pop(APPENDED, None):
            loop.call_soon_threadsafe(hub.publish, events)

    db.on_commit(committed)


def create(db: Database, client: str = "cli_a") -> str:
    template = PipelineTemplate.from_json({"name": "t", "version": 1, "stages": [stage()]})
    new = executions.NewExecution(
        template, {"topic": "Logs", "granularity": 2}, "normal", "", client, ""
    )
    return db.run_tx_sync(lambda tx: executions.create(tx, new))


def append(db: Database, execution_id: str, count: int = 1) -> None:
    def work(session: Session) -> None:
        execution = session.get(models.Execution, execution_id)
        assert execution is not None
        for _ in range(count):
            executions.append_event(Tx.of(session), execution, "STAGE_PROGRESS", message="x")

    db.run_sync(work)


def finish(db: Database, execution_id: str) -> None:
    db.run_sync(lambda s: executions.cancel(s, ADMIN, execution_id, "done watching"))


class Follower:
    """Follows an execution in a task, keeping each look it was handed."""

    def __init__(self, hub: EventHub, execution_id: str, after: int = 0) -> None:
        self.looks: list[list[LoggedEvent]] = []
        self.task = asyncio.create_task(self._follow(hub, execution_id, after))

    async def _follow(self, hub: EventHub, execution_id: str, after: int) -> None:
        async for events in hub.follow(execution_id, after, principal=ADMIN):
            self.looks.append(events)

    @property
    def sequences(self) -> list[int]:
        return [event.sequence for events in self.looks for event in events]


async def test_follow_hands_out_the_history_then_live_events_and_ends_with_the_execution(
    db: Database,
) -> None:
    hub = EventHub(db)
    publish_on_commit(db, hub)
    execution_id = create(db)  # EXECUTION_QUEUED, STAGE_QUEUED
    follower = Follower(hub, execution_id)
    await eventually(lambda: follower.sequences == [1, 2])
    assert len(follower.looks) == 1  # the history, in one look
    append(db, execution_id, 3)
    await eventually(lambda: follower.sequences == [1, 2, 3, 4, 5])
    finish(db, execution_id)
    await asyncio.wait_for(follower.task, timeout=10)
    assert follower.sequences == [1, 2, 3, 4, 5, 6]
    assert follower.looks[-1][-1].type == "EXECUTION_CANCELLED"
    assert hub.subscribers(execution_id) == 0


async def test_follow_reads_the_log_for_events_it_was_not_handed(db: Database) -> None:
    hub = EventHub(db)
    seen = committed_events(db)  # nothing is published unless the test does it
    execution_id = create(db)
    follower = Follower(hub, execution_id, after=1)
    await eventually(lambda: follower.sequences == [2])

    # Told only that the log grew (another replica's events, through NOTIFY).
    append(db, execution_id, 2)
    hub.notify(execution_id, 3)
    await eventually(lambda: follower.sequences == [2, 3, 4])

    # Handed only the last of three events: the gap before it is read from the log.
    append(db, execution_id, 3)
    hub.publish(seen[-1:])
    await eventually(lambda: follower.sequences == [2, 3, 4, 5, 6, 7])
    assert [e.sequence for e in follower.looks[-1]] == [5, 6, 7]

    # Told nothing at all (a lost notification): the log is read again after a quiet second.
    finish(db, execution_id)
    await asyncio.wait_for(follower.task, timeout=10)
    assert follower.sequences == list(range(2, 9))
    assert hub.subscribers(execution_id) == 0


async def test_following_a_finished_execution_from_its_last_event_ends_at_once(
    db: Database,
) -> None:
    hub = EventHub(db)
    execution_id = create(db)
    finish(db, execution_id)
    follower = Follower(hub, execution_id, after=3)
    await asyncio.wait_for(follower.task, timeout=10)
    assert follower.looks == []


async def test_follow_refuses_a_negative_sequence_and_a_principal_that_may_not_see_it(
    db: Database,
) -> None:
    hub = EventHub(db)
    execution_id = create(db, client="cli_a")
    with pytest.raises(InvalidArgument):
        await anext(hub.follow(execution_id, -1, principal=ADMIN))
    other = Principal(kind="api_key", client_id="cli_b")
    for principal, target in ((other, execution_id), (ADMIN, "exe_unknown")):
        with pytest.raises(ExecutionNotFound):
            await anext(hub.follow(target, 0, principal=principal))
        assert hub.subscribers(target) == 0
