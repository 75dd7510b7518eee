"""The queue stays flat at depth: every statement the claim and the once-a-second housekeeping
send to SQLite is answered from an index range, never by walking a table or sorting every ready
stage (which made a claim cost grow with the number of queued executions)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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


def relations(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(table, node type, index) of every node of a PostgreSQL JSON plan that reads a table."""
    found = []
    if "Relation Name" in plan:
        found.append((plan["Relation Name"], plan["Node Type"], plan.get("Index Name", "")))
    for child in plan.get("Plans", []):
        found += relations(child)
    return found


def test_a_new_executions_turn_looks_executions_up_by_key_on_postgres(postgres_url: str) -> None:
    """Whether a client's new execution waits for its turn counts the client's ready stages
    and looks each one's execution up by its key. On a fresh PostgreSQL database (no statistics,
    as when a queue fills faster than it is analyzed) the join it was planned as a nested loop
    over every queued execution for each ready stage: ExecutePipeline cost grew with the queue."""
    db = Database(postgres_url)
    db.migrate("orchestrator", MIGRATIONS, models.OrchestratorBase.metadata)
    template = PipelineTemplate.from_json({"name": "t", "version": 1, "stages": [stage()]})

    def fill(tx: Tx) -> None:
        for i in range(300):
            new = executions.NewExecution(
                template, {"topic": "Depth", "granularity": 2}, "normal", "", f"cli_{i % 3}", "", 5
            )
            executions.create(tx, new)

    def plan(tx: Tx) -> tuple[int, list[tuple[str, str, str]]]:
        params = {"client": "cli_1", "turn": executions.WAITING_TURN}
        [count] = tx.one(executions.READY_STARTS, params)
        [[doc]] = tx.all("EXPLAIN (FORMAT JSON) " + executions.READY_STARTS, params)
        return count, relations(doc[0]["Plan"])

    try:
        db.run_tx_sync(fill)
        count, read = db.run_tx_sync(plan)
    finally:
        db.close()
    assert count == 5  # the client's limit: the other 95 wait for their turn
    assert ("executions", "Index Scan", "executions_pkey") in read, read
    assert all(index == "executions_pkey" for table, _, index in read if table == "executions"), (
        read
    )
    assert all(node != "Seq Scan" for table, node, _ in read if table == "stages"), read
