"""The durable priority queue. Ready stages are rows of `stages` ordered by `queue_key` (enqueue
time moved earlier by priority, so waiting work ages upwards). Claiming one is a lease: status
running, a new epoch, an owner and an expiry, taken with SELECT … FOR UPDATE SKIP LOCKED on
PostgreSQL so several orchestrator replicas share one queue with no other broker."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bitware_core.auth import Principal
from bitware_core.db import utcnow
from bitware_core.domain import AttemptStatus, ExecutionStatus, StageStatus
from bitware_core.sql import Tx, columns, from_row, insert_rows, update_row, width
from orchestrator_server import models
from orchestrator_server.executions import (
    WAITING_TURN,
    append_event,
    end_attempt,
    move_execution,
    move_stage,
    stage_fields,
    take_turn,
)

READY = (StageStatus.QUEUED, StageStatus.RETRY_WAIT)
#: The most stages of one capability a claim takes: a worker may have hundreds of free slots
#: (one per model call it can wait on), and a claim's work should not grow with them. The
#: dispatcher claims again at once after a full batch.
CLAIM_BATCH = 32


@dataclass(frozen=True)
class Claim:
    """A claimed stage attempt: everything the dispatcher needs without touching the DB."""

    stage_id: str
    execution_id: str
    client_id: str
    attempt: int
    epoch: int
    capability: str
    action: str
    structure_template: str
    params: dict[str, str]
    timeout_s: float
    spec: dict[str, Any]
    previous_output: dict[str, Any]
    #: Set instead of previous_output when that output is stored by reference.
    previous_output_ref: str
    previous_job_id: str
    feedback: str
    min_quality: float
    #: When set, the attempt is re-attached on this worker (its result may already exist).
    reattach_worker: str = ""
    #: The worker the stage is offered to.
    worker_id: str = ""


#: PostgreSQL advisory-lock space of one client's start decisions (the two-key form, which never
#: meets the one-key locks of `Database.exclusive`).
CLIENT_STARTS_LOCK = 1_200_012


def _decides_starts(tx: Tx, client_id: str, held: dict[str, bool], running: Counter[str]) -> bool:
    """Whether this claim may start executions of the client. On PostgreSQL, replicas decide one
    client's starts one at a time: a transaction-scoped advisory lock per client, taken without
    waiting (a client another replica is deciding now is skipped this round), after which the
    client's running executions are counted again, with what other replicas have committed."""
    if not tx.postgres:
        return True  # SQLite has one writer: no other claim runs meanwhile
    if client_id not in held:
        [got] = tx.one(
            "SELECT pg_try_advisory_xact_lock(:space, hashtext(:client))",
            {"space": CLIENT_STARTS_LOCK, "client": client_id},
        )
        held[client_id] = bool(got)
        if got:
            [count] = tx.one(
                "SELECT count(*) FROM executions WHERE client_id = :client AND status = 'running'",
                {"client": client_id},
            )
            running[client_id] = int(count)
    return held[client_id]


def _running_executions(tx: Tx) -> tuple[Counter[str], list[str]]:
    """How many executions each client has in progress, and the clients at their limit (whose
    executions that have not started must wait)."""
    rows = tx.all(
        "SELECT client_id, count(*), max(client_concurrency) FROM executions"
        " WHERE status = 'running' GROUP BY client_id"
    )
    running = Counter({client: count for client, count, _ in rows})
    return running, sorted(client for client, count, cap in rows if cap and count >= cap)


def _pairs(
    tx: Tx, where: str, params: dict[str, Any], tail: str = ""
) -> list[tuple[models.Stage, models.Execution]]:
    """Stages with their executions, locked; a row another replica (or writer) holds is
    skipped, never waited for."""
    rows = tx.all(
        f"SELECT {columns(models.Stage, 's')}, {columns(models.Execution, 'e')}"
        f" FROM stages s JOIN executions e ON s.execution_id = e.id WHERE {where}{tail}"
        + tx.lock("OF s, e SKIP LOCKED"),
        params,
    )
    split = width(models.Stage)
    return [
        (from_row(tx, models.Stage, row[:split]), from_row(tx, models.Execution, row[split:]))
        for row in rows
    ]


def busy_slots(tx: Tx) -> Counter[str]:
    """How many stages each worker holds, whichever replica offered them: the current attempt
    of every running stage."""
    rows = tx.all(
        "SELECT a.worker_id, count(*) FROM attempts a"
        " JOIN stages s ON s.id = a.stage_id AND a.epoch = s.epoch"
        " WHERE s.status = 'running' GROUP BY a.worker_id"
    )
    return Counter({worker_id: count for worker_id, count in rows})


def open_slots(
    workers: list[models.Worker], busy: Counter[str], most: int = CLAIM_BATCH
) -> dict[str, list[str]]:
    """Per capability, one worker id per free slot, at most `most`: least loaded workers
    first, their slots interleaved so that consecutive stages spread over workers."""
    slots: dict[str, list[str]] = {}
    by_load = sorted(workers, key=lambda w: busy[w.id] / w.max_concurrency)
    free = {w.id: max(0, w.max_concurrency - busy[w.id]) for w in by_load}
    for round_ in range(min(max(free.values(), default=0), most)):
        for worker in by_load:
            if free[worker.id] > round_:
                for capability in worker.capabilities:
                    taken = slots.setdefault(capability, [])
                    if len(taken) < most:
                        taken.append(worker.id)
    return slots


def claim(
    tx: Tx,
    owner: str,
    workers: list[models.Worker],
    avoid: dict[str, set[str]],
    lease_seconds: float,
) -> list[Claim]:
    """Claims ready stages, best first, and offers each to a worker in the same transaction.

    Each claimed stage takes a free slot of one of `workers` (counted in the database, so that
    several replicas never offer a worker more than it takes): the worker that may still hold
    its attempt (re-attach) when it has a slot, else the least loaded one that is not in
    `avoid[stage id]` (workers that just declined it). An execution of a client already running
    as many executions as its tier allows does not start (it waits; the client's running
    executions go on); executions waiting for their client's turn are never candidates. At
    most `CLAIM_BATCH` stages of each capability."""
    slots = open_slots(workers, busy_slots(tx), CLAIM_BATCH)
    now = utcnow()
    claims: list[Claim] = []
    running, capped = _running_executions(tx)
    held: dict[str, bool] = {}
    names = {f"c{i}": client for i, client in enumerate(capped)}
    skip_capped = (
        f" AND NOT (e.status = 'queued' AND e.client_id IN ({', '.join(':' + n for n in names)}))"
        if names
        else ""
    )
    for capability, free_slots in slots.items():
        if not free_slots:
            continue
        candidates = _ready(tx, capability, len(free_slots) * 4, now, skip_capped, names)
        for stage, execution in candidates:
            if not free_slots:
                break
            starts, cap = execution.status == ExecutionStatus.QUEUED, execution.client_concurrency
            if starts and cap and not _decides_starts(tx, execution.client_id, held, running):
                continue
            if starts and cap and running[execution.client_id] >= cap:
                continue
            running[execution.client_id] += starts
            worker_id = _pick(free_slots, stage.reattach_worker, avoid.get(stage.id, set()))
            claims.append(_claim_one(tx, stage, execution, owner, now, lease_seconds, worker_id))
            if starts and cap:
                take_turn(tx, execution.client_id, now)
    return claims


def _ready(
    tx: Tx, capability: str, limit: int, now: datetime, skip: str, params: dict[str, str]
) -> list[tuple[models.Stage, models.Execution]]:
    """The first `limit` ready stages of a capability in queue order, locked: one walk of the
    queue index in key order per ready status, merged. (One query over both statuses would
    make the database sort every ready stage on each claim: O(depth) instead of O(limit).)"""
    found = []
    for status in READY:
        found += _pairs(
            tx,
            f"s.status = '{status}' AND s.capability = :capability"
            " AND s.queue_key < :turn AND s.ready_at <= :now" + skip,
            {
                **params,
                "capability": capability,
                "turn": WAITING_TURN,
                "now": tx.ts(now),
                "limit": limit,
            },
            " ORDER BY s.queue_key LIMIT :limit",
        )
    return sorted(found, key=lambda pair: pair[0].queue_key)[:limit]


def _pick(free_slots: list[str], reattach: str, avoid: set[str]) -> str:
    if reattach in free_slots:
        chosen = reattach
    else:
        chosen = next((w for w in free_slots if w not in avoid), free_slots[0])
    free_slots.remove(chosen)
    return chosen


def _claim_one(
    tx: Tx,
    stage: models.Stage,
    execution: models.Execution,
    owner: str,
    now: datetime,
    lease_seconds: float,
    worker_id: str,
) -> Claim:
    move_stage(stage, StageStatus.RUNNING)
    reattach, stage.reattach_worker = stage.reattach_worker, ""
    if not reattach:
        stage.attempts += 1
    stage.epoch += 1
    stage.lease_owner = owner
    stage.lease_expires_at = now + timedelta(seconds=lease_seconds)
    stage.started_at = stage.started_at or now
    update_row(
        tx,
        stage,
        "status",
        "reattach_worker",
        "attempts",
        "epoch",
        "lease_owner",
        "lease_expires_at",
        "started_at",
    )
    changed = ["last_sequence"]
    if execution.status == ExecutionStatus.QUEUED:
        move_execution(execution, ExecutionStatus.RUNNING)
        execution.started_at = now
        changed += ["status", "started_at"]
        append_event(tx, execution, "EXECUTION_STARTED", message="started")
    # A stage claimed for the first time (its first epoch) has no attempt rows yet.
    offers = (
        tx.one("SELECT count(*) FROM attempts WHERE stage_id = :id", {"id": stage.id})[0]
        if stage.epoch > 1
        else 0
    )
    insert_rows(
        tx,
        models.Attempt,
        [
            {
                "stage_id": stage.id,
                "number": offers + 1,
                "epoch": stage.epoch,
                "worker_id": worker_id,
            }
        ],
    )
    append_event(
        tx,
        execution,
        "STAGE_OFFERED",
        **stage_fields(stage),
        worker_id=worker_id,
        message=f"offered to {worker_id}",
    )
    update_row(tx, execution, *changed)
    previous = (
        tx.one(
            "SELECT output, output_ref, job_id FROM stages"
            ' WHERE execution_id = :id AND "order" = :order',
            {"id": stage.execution_id, "order": stage.order - 1},
        )
        if stage.order > 1
        else None
    )
    return Claim(
        stage_id=stage.id,
        execution_id=stage.execution_id,
        client_id=execution.client_id,
        attempt=stage.attempts,
        epoch=stage.epoch,
        capability=stage.capability,
        action=stage.action,
        structure_template=stage.structure_template,
        params=dict(stage.params),
        timeout_s=stage.timeout_s,
        spec=execution.spec,
        previous_output=tx.loads(previous[0]) if previous else {},
        previous_output_ref=previous[1] if previous else "",
        previous_job_id=previous[2] if previous else "",
        feedback=stage.feedback,
        min_quality=stage.min_quality,
        reattach_worker=reattach,
        worker_id=worker_id,
    )


def renew_leases(tx: Tx, owner: str, stage_ids: list[str], lease_seconds: float) -> None:
    if stage_ids:
        names = {f"s{i}": stage_id for i, stage_id in enumerate(stage_ids)}
        tx.execute(
            "UPDATE stages SET lease_expires_at = :until WHERE lease_owner = :owner"
            f" AND id IN ({', '.join(':' + n for n in names)})",
            {**names, "owner": owner, "until": tx.ts(utcnow() + timedelta(seconds=lease_seconds))},
        )


def reclaim_expired(tx: Tx) -> int:
    """Re-queues running stages whose lease expired (their holder died). A stage a worker had
    accepted is re-attached on that worker, which returns its result without working twice."""
    now = utcnow()
    expired = _pairs(tx, "s.status = 'running' AND s.lease_expires_at < :now", {"now": tx.ts(now)})
    for stage, execution in expired:
        attempt = tx.one(
            "SELECT worker_id, status FROM attempts WHERE stage_id = :id AND epoch = :epoch",
            {"id": stage.id, "epoch": stage.epoch},
        )
        if attempt is not None and attempt[1] == "running":
            stage.reattach_worker = attempt[0]
        lease = {"reason": "LEASE_EXPIRED"}
        end_attempt(tx, stage.id, stage.epoch, AttemptStatus.ABANDONED, error=lease)
        move_stage(stage, StageStatus.QUEUED)
        stage.ready_at = now
        stage.lease_owner = ""
        update_row(tx, stage, "reattach_worker", "status", "ready_at", "lease_owner")
        append_event(
            tx,
            execution,
            "STAGE_QUEUED",
            **stage_fields(stage),
            message="its holder stopped responding; offered again",
        )
        update_row(tx, execution, "last_sequence")
    return len(expired)


def queue_stats(tx: Tx, client_id: str = "") -> dict[str, Any]:
    """Per priority, how many stages wait and for how long the oldest has; how many run and
    how many wait to be retried: of one client's executions, or of all when `client_id` is
    empty."""
    now = utcnow()
    levels: dict[int, tuple[int, float]] = {priority: (0, 0.0) for priority in (4, 3, 2, 1)}
    running = waiting = 0
    for status, priority, count, oldest in tx.all(
        "SELECT status, priority, count(*), min(queued_at) FROM stages"
        " WHERE status IN ('queued', 'running', 'retry_wait')"
        + (" AND client_id = :client" if client_id else "")
        + " GROUP BY status, priority",
        {"client": client_id},
    ):
        if status == "queued":
            since = tx.when(oldest)
            levels[priority] = (count, (now - since).total_seconds() if since else 0.0)
        elif status == "running":
            running += count
        else:
            waiting += count
    return {"levels": levels, "running": running, "retry_waiting": waiting}


def queue_seen_by(tx: Tx, principal: Principal) -> dict[str, Any]:
    """`queue_stats` as `principal` may see them: a client only its own work, staff and
    services every client's."""
    return queue_stats(tx, "" if principal.sees_all_clients else principal.client_id)
