"""The queue stays flat at depth: every statement the claim and the once-a-second housekeeping
send to SQLite is answered from an index range, never by walking a table or sorting every ready
stage (which made a claim cost grow with the number of queued executions)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bitware_core.db import Database
from bitware_core.domain import PipelineTemplate
from bitware_core.sql import Tx
from orchestrator_server import executions, models, outcomes, queue, registry
from tests.orchestrator.conftest import stage
from tests.orchestrator.test_queue import MIGRATIONS, worker

#: Tables that grow with the queue and the history; the workers table does not.
GROWING = ("stages", "executions", "attempts", "events", "s", "e", "a")


def fill(tx: Tx) -> None:
    """Queued, waiting-for-turn, retrying and ended executions of several clients."""
    template = PipelineTemplate.from_json(
        {"name": "t", "version": 1, "stages": [stage(), stage(order=2)]}
    )
    for i in range(120):
        priority = ("low", "normal", "high", "critical")[i % 4]
        new = executions.NewExecution(
            template,
            {"topic": "Depth", "granularity": 2},
            priority,
            f"req_{i}",
            f"cli_{i % 6}",
            "",
            10,
        )
        executions.create(tx, new)
    tx.execute("UPDATE stages SET status = 'retry_wait' WHERE rowid % 17 = 0 AND status = 'queued'")
    tx.execute(
        "UPDATE executions SET status = 'succeeded', outcome_reported = :no WHERE rowid % 5 = 0",
        {"no": False},
    )


def plans_of(path: Path, statements: list[str]) -> dict[str, list[str]]:
    with sqlite3.connect(path) as connection:
        return {
            sql: [row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + sql)]
            for sql in statements
            if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE"))
        }


def full_walks(sql: str, plan: list[str]) -> list[str]:
    """The lines of a plan that visit every row of a growing table, or every row of one status
    (every queued stage, every ended execution). Running rows are bounded by the workers'
    slots; the queue's figures per priority count every queued stage by design, from the
    index alone."""
    bounded = "status = 'running'" in sql or sql.startswith("SELECT status, priority, count(*)")
    return [
        line
        for line in plan
        if "TEMP B-TREE FOR ORDER BY" in line
        or any(line.startswith(f"SCAN {table}") for table in GROWING)
        or (line.endswith("(status=?)") and not bounded)
    ]


def test_claim_and_housekeeping_use_index_ranges_only(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.db"
    db = Database(f"sqlite:///{path}")
    db.migrate("orchestrator", MIGRATIONS, models.OrchestratorBase.metadata)
    db.run_tx_sync(fill)
    sent: list[str] = []

    def claim_and_housekeep(tx: Tx) -> None:
        tx._connection.set_trace_callback(sent.append)
        try:
            assert queue.claim(tx, "me", [worker(capacity=8)], {}, 15.0)
            queue.reclaim_expired(tx)
            executions.expire(tx, 3600.0)
            queue.queue_stats(tx)
            outcomes.unreported(tx)
            registry.available(tx)
        finally:
            tx._connection.set_trace_callback(None)

    db.run_tx_sync(claim_and_housekeep)
    plans = plans_of(path, sent)
    # the claim's candidate queries are among them, walking the queue index in order
    candidates = [p for sql, p in plans.items() if "ORDER BY s.queue_key" in sql]
    assert candidates
    assert all(any("ix_stages_queue" in line for line in plan) for plan in candidates), candidates
    walks = {sql: full_walks(sql, plan) for sql, plan in plans.items() if full_walks(sql, plan)}
    assert not walks, walks
