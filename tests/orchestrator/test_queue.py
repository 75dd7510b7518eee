"""The durable queue and the attempt epochs, on a real SQLite file: priority order, aging, leases
that expire, and stale results that are refused."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import Database, utcnow
from bitware_core.domain import ExecutionStatus, PipelineTemplate, Quality, StageOutcome
from bitware_core.sql import Tx
from orchestrator_server import executions, models, outcomes, queue
from orchestrator_server.errors import StaleAttempt, TemplateDeprecated
from tests.orchestrator.conftest import stage

MIGRATIONS = str(Path(executions.__file__).parent / "migrations")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'orchestrator.db'}")
    database.migrate("orchestrator", MIGRATIONS, models.OrchestratorBase.metadata)
    return database


def create(tx: Tx, priority: str, client: str = "cli_a", limit: int = 0) -> str:
    template = PipelineTemplate.from_json({"name": "t", "version": 1, "stages": [stage()]})
    spec = {"topic": "Queues", "granularity": 2}
    new = executions.NewExecution(template, spec, priority, "", client, "", limit)
    return executions.create(tx, new)


def waiting_for_turn(db: Database, execution_ids: list[str]) -> list[bool]:
    def read(session: Session) -> list[bool]:
        return [
            executions.stages_of(session, execution_id)[0].queue_key >= executions.WAITING_TURN
            for execution_id in execution_ids
        ]

    return db.run_sync(read)


def worker(worker_id: str = "w1", capacity: int = 1, capability: str = "scripted") -> models.Worker:
    return models.Worker(
        id=worker_id, address="127.0.0.1:1", capabilities=[capability], max_concurrency=capacity
    )


def claim_order(db: Database, count: int) -> list[str]:
    claims = db.run_tx_sync(lambda tx: queue.claim(tx, "me", [worker(capacity=count)], {}, 15.0))
    return [c.execution_id for c in claims]


def test_higher_priority_is_claimed_first_and_fifo_within_a_priority(db: Database) -> None:
    low = db.run_tx_sync(lambda tx: create(tx, "low"))
    normal_1 = db.run_tx_sync(lambda tx: create(tx, "normal"))
    normal_2 = db.run_tx_sync(lambda tx: create(tx, "normal"))
    critical = db.run_tx_sync(lambda tx: create(tx, "critical"))
    assert claim_order(db, 4) == [critical, normal_1, normal_2, low]


def test_low_priority_ages_past_fresh_critical_work(db: Database) -> None:
    old_low = db.run_tx_sync(lambda tx: create(tx, "low"))
    # The low stage has waited four aging periods: longer than the three levels between them.
    waited = utcnow() - timedelta(seconds=4 * executions.AGING_SECONDS)
    db.run_sync(
        lambda s: s.execute(
            update(models.Stage)
            .where(models.Stage.execution_id == old_low)
            .values(queue_key=executions.queue_key(1, waited))
        )
    )
    fresh_critical = db.run_tx_sync(lambda tx: create(tx, "critical"))
    assert claim_order(db, 2) == [old_low, fresh_critical]


def test_claims_respect_free_capacity_per_capability(db: Database) -> None:
    for _ in range(3):
        db.run_tx_sync(lambda tx: create(tx, "normal"))
    workers = [worker("w1"), worker("w2"), worker("w3", capacity=5, capability="other")]
    claims = db.run_tx_sync(lambda tx: queue.claim(tx, "me", workers, {}, 15.0))
    assert sorted(c.worker_id for c in claims) == ["w1", "w2"]
    # The third stage waits: both scripted workers are busy, whichever replica asks.
    assert db.run_tx_sync(lambda tx: queue.claim(tx, "me", workers, {}, 15.0)) == []
    assert db.run_tx_sync(lambda tx: queue.claim(tx, "other-replica", workers, {}, 15.0)) == []


def test_a_slot_frees_when_its_stage_ends(db: Database) -> None:
    for _ in range(2):
        db.run_tx_sync(lambda tx: create(tx, "normal"))
    [first] = db.run_tx_sync(lambda tx: queue.claim(tx, "me", [worker()], {}, 15.0))
    db.run_tx_sync(
        lambda tx: outcomes.record_result(
            tx, first, StageOutcome(job_id="j", quality=Quality(score=90))
        )
    )
    [second] = db.run_tx_sync(lambda tx: queue.claim(tx, "another-replica", [worker()], {}, 15.0))
    assert second.execution_id != first.execution_id


def test_expired_lease_is_reclaimed_and_the_stale_result_refused(db: Database) -> None:
    db.run_tx_sync(lambda tx: create(tx, "normal"))
    [first] = db.run_tx_sync(lambda tx: queue.claim(tx, "dead-replica", [worker("w1")], {}, 15.0))
    db.run_sync(
        lambda s: s.execute(
            update(models.Stage).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    )
    assert db.run_tx_sync(queue.reclaim_expired) == 1
    [second] = db.run_tx_sync(lambda tx: queue.claim(tx, "alive", [worker("w2")], {}, 15.0))
    assert second.epoch > first.epoch
    late = StageOutcome(job_id="late", quality=Quality(score=99))
    with pytest.raises(StaleAttempt):
        db.run_tx_sync(lambda tx: outcomes.record_result(tx, first, late))
    finished = db.run_tx_sync(
        lambda tx: outcomes.record_result(
            tx, second, StageOutcome(job_id="fresh", quality=Quality(score=90))
        )
    )
    assert finished.terminal
    stored = db.run_sync(lambda s: s.get_one(models.Execution, finished.execution_id).job_id)
    assert stored == "fresh"


def test_accepted_attempt_of_a_dead_holder_is_reattached_to_its_worker(db: Database) -> None:
    db.run_tx_sync(lambda tx: create(tx, "normal"))
    [first] = db.run_tx_sync(lambda tx: queue.claim(tx, "dead-replica", [worker("w1")], {}, 15.0))
    db.run_tx_sync(lambda tx: outcomes.record_accept(tx, first, "w1"))
    db.run_sync(
        lambda s: s.execute(
            update(models.Stage).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    )
    db.run_tx_sync(queue.reclaim_expired)
    workers = [worker("w2"), worker("w1")]
    [again] = db.run_tx_sync(lambda tx: queue.claim(tx, "alive", workers, {}, 15.0))
    assert again.reattach_worker == again.worker_id == "w1"  # back to the worker that has it
    assert again.attempt == first.attempt  # the same attempt, so the worker's result counts
    assert again.epoch > first.epoch


def test_a_stage_is_not_offered_again_to_a_worker_that_just_declined_it(db: Database) -> None:
    db.run_tx_sync(lambda tx: create(tx, "normal"))
    [first] = db.run_tx_sync(lambda tx: queue.claim(tx, "me", [worker("w1")], {}, 15.0))
    db.run_tx_sync(
        lambda tx: outcomes.record_decline(tx, first, "w1", "AT_CAPACITY", "busy", 0.0, final=False)
    )
    avoid = {first.stage_id: {"w1"}}
    [second] = db.run_tx_sync(
        lambda tx: queue.claim(tx, "me", [worker("w1"), worker("w2")], avoid, 15.0)
    )
    assert second.worker_id == "w2"


def test_illegal_transitions_are_impossible(db: Database) -> None:
    execution_id = db.run_tx_sync(lambda tx: create(tx, "normal"))

    def finish_twice(session: Session) -> None:
        execution = session.get_one(models.Execution, execution_id)
        executions.move_execution(execution, ExecutionStatus.SUCCEEDED)

    with pytest.raises(Exception, match="cannot go from queued to succeeded"):
        db.run_sync(finish_twice)


def test_executions_over_the_client_limit_wait_for_their_turn(db: Database) -> None:
    ids = [db.run_tx_sync(lambda tx: create(tx, "normal", limit=2)) for _ in range(4)]
    other = db.run_tx_sync(lambda tx: create(tx, "normal", client="cli_b", limit=2))
    # Two ready to start (the limit); the rest wait, and no claim ever scans them.
    assert waiting_for_turn(db, [*ids, other]) == [False, False, True, True, False]
    assert claim_order(db, 1) == [ids[0]]
    # Starting one lets the client's next in, behind what was ready before (the other client).
    assert waiting_for_turn(db, ids) == [False, False, False, True]
    # (claim_order's one worker already holds the stages claimed before)
    assert claim_order(db, 2) == [ids[1]]  # running 2 of 2 now: the client waits
    assert claim_order(db, 7) == [other]


def test_a_cancelled_execution_gives_its_turn_to_the_next(db: Database) -> None:
    ids = [db.run_tx_sync(lambda tx: create(tx, "normal", limit=1)) for _ in range(3)]
    assert waiting_for_turn(db, ids) == [False, True, True]
    admin = Principal(kind="user", role="admin")
    db.run_sync(lambda s: executions.cancel(s, admin, ids[0], "not needed"))
    assert waiting_for_turn(db, ids[1:]) == [False, True]
    assert claim_order(db, 3) == [ids[1]]


def test_two_replicas_claiming_at_once_never_start_more_than_the_client_limit(
    postgres_url: str,
) -> None:
    replicas = [Database(postgres_url), Database(postgres_url)]
    replicas[0].migrate("orchestrator", MIGRATIONS, models.OrchestratorBase.metadata)
    db = replicas[0]
    limit = 6
    try:
        running = [db.run_tx_sync(lambda tx: create(tx, "normal", limit=limit)) for _ in range(5)]
        assert sorted(claim_order(db, 5)) == sorted(running)  # five of six running
        ready = [db.run_tx_sync(lambda tx: create(tx, "normal", limit=limit)) for _ in range(6)]
        assert waiting_for_turn(db, ready) == [False] * 6
        holding, release = threading.Event(), threading.Event()
        claimed: list[list[str]] = []

        def claim_and_hold(tx: Tx) -> None:
            # One free slot: this claim locks a window of four candidates and starts one.
            claims = queue.claim(tx, "replica-1", [worker("w2", capacity=1)], {}, 15.0)
            claimed.append([c.execution_id for c in claims])
            holding.set()
            release.wait(10)  # not committed yet while the other replica claims

        thread = threading.Thread(target=replicas[0].run_tx_sync, args=(claim_and_hold,))
        thread.start()
        try:
            assert holding.wait(10)
            # The other replica sees the candidates outside that window, and five running.
            other = replicas[1].run_tx_sync(
                lambda tx: queue.claim(tx, "replica-2", [worker("w3", capacity=10)], {}, 15.0)
            )
        finally:
            release.set()
            thread.join(10)
        assert claimed == [[ready[0]]]  # the sixth
        assert other == []  # a seventh would be past the limit
    finally:
        for replica in replicas:
            replica.close()


def test_a_claim_takes_one_batch_however_many_slots_are_free(db: Database) -> None:
    created = [
        db.run_tx_sync(lambda tx: create(tx, "normal")) for _ in range(queue.CLAIM_BATCH + 8)
    ]
    roomy = [worker(capacity=256)]

    first = db.run_tx_sync(lambda tx: queue.claim(tx, "me", roomy, {}, 15.0))
    second = db.run_tx_sync(lambda tx: queue.claim(tx, "me", roomy, {}, 15.0))

    assert len(first) == queue.CLAIM_BATCH
    assert sorted(c.execution_id for c in first + second) == sorted(created)


def test_a_deprecated_template_starts_nothing_not_even_a_known_idempotency_key(
    db: Database,
) -> None:
    template = PipelineTemplate.from_json({"name": "t", "version": 1, "stages": [stage()]})
    spec = {"topic": "Queues", "granularity": 2}
    first = executions.NewExecution(template, spec, "normal", "", "cli_a", "key-1")
    db.run_tx_sync(lambda tx: executions.create(tx, first))
    deprecated = replace(template, deprecated=True)
    again = executions.NewExecution(deprecated, spec, "normal", "", "cli_a", "key-1")
    # Refused before the spec is checked, as ExecutePipeline always did.
    bad_spec = executions.NewExecution(deprecated, {"topic": ""}, "normal", "", "cli_a", "")
    for new in (again, bad_spec):
        with pytest.raises(TemplateDeprecated) as refused:
            db.run_tx_sync(lambda tx, new=new: executions.create(tx, new))
        assert (refused.value.template, refused.value.version) == ("t", 1)


def test_a_client_sees_only_its_own_queue_and_staff_see_every_client_s(db: Database) -> None:
    db.run_tx_sync(lambda tx: create(tx, "high", client="cli_a"))
    db.run_tx_sync(lambda tx: create(tx, "high", client="cli_b"))
    db.run_tx_sync(lambda tx: create(tx, "low", client="cli_b"))

    def depths(principal: Principal) -> dict[int, int]:
        stats = db.run_tx_sync(lambda tx: queue.queue_seen_by(tx, principal))
        return {priority: depth for priority, (depth, _) in stats["levels"].items() if depth}

    high, low = executions.PRIORITIES["high"], executions.PRIORITIES["low"]
    assert depths(Principal(kind="api_key", client_id="cli_a")) == {high: 1}
    assert depths(Principal(kind="api_key", client_id="cli_b")) == {high: 1, low: 1}
    for staff in (Principal(kind="user", role="admin"), Principal(kind="service")):
        assert depths(staff) == {high: 2, low: 1}
