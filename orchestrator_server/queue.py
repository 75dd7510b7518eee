"""The durable priority queue. Ready stages are rows of `stages` ordered by `queue_key` (enqueue
time moved earlier by priority, so waiting work ages upwards). Claiming one is a lease: status
running, a new epoch, an owner and an expiry, taken with SELECT … FOR UPDATE SKIP LOCKED on
PostgreSQL so several orchestrator replicas share one queue with no other broker."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bitware_core.db import utcnow
from bitware_core.sql import Tx, insert_rows, model_row, update_row
from orchestrator_server import models
from orchestrator_server.executions import (
    append_event,
    end_attempt,
    move_execution,
    move_stage,
    stage_fields,
)

READY = ("queued", "retry_wait")


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


def _running_per_client(tx: Tx, client_ids: set[str]) -> Counter[str]:
    names = {f"c{i}": client for i, client in enumerate(sorted(client_ids))}
    rows = tx.all(
        "SELECT e.client_id, count(*) FROM executions e JOIN stages s ON s.execution_id = e.id"
        f" WHERE s.status = 'running' AND e.client_id IN ({', '.join(':' + n for n in names)})"
        " GROUP BY e.client_id",
        names,
    )
    return Counter({client: count for client, count in rows})


_CANDIDATE_STAGE = (
    "id",
    "execution_id",
    "order",
    "name",
    "capability",
    "action",
    "structure_template",
    "params",
    "timeout_s",
    "min_quality",
    "status",
    "attempts",
    "epoch",
    "feedback",
    "reattach_worker",
    "started_at",
)
_CANDIDATE_EXECUTION = (
    "id",
    "client_id",
    "spec",
    "status",
    "client_concurrency",
    "last_sequence",
    "stages_done",
    "stages_total",
)
_CANDIDATES = (
    "SELECT "
    + ", ".join(f's."{c}"' for c in _CANDIDATE_STAGE)
    + ", "
    + ", ".join(f'e."{c}"' for c in _CANDIDATE_EXECUTION)
    + " FROM stages s JOIN executions e ON s.execution_id = e.id"
    " WHERE s.status IN ('queued', 'retry_wait') AND s.capability = :capability"
    " AND s.ready_at <= :now ORDER BY s.queue_key LIMIT :limit"
)


def _candidates(
    tx: Tx, capability: str, now: datetime, limit: int
) -> list[tuple[models.Stage, models.Execution]]:
    # Never waits: a row another replica (or writer) holds is simply skipped.
    rows = tx.all(
        _CANDIDATES + tx.lock("OF s, e SKIP LOCKED"),
        {"capability": capability, "now": tx.ts(now), "limit": limit},
    )
    split = len(_CANDIDATE_STAGE)
    found = []
    for row in rows:
        stage = dict(zip(_CANDIDATE_STAGE, row[:split], strict=True))
        execution = dict(zip(_CANDIDATE_EXECUTION, row[split:], strict=True))
        stage["params"] = tx.loads(stage["params"])
        stage["started_at"] = tx.when(stage["started_at"])
        execution["spec"] = tx.loads(execution["spec"])
        found.append((model_row(models.Stage, stage), model_row(models.Execution, execution)))
    return found


def claim(
    tx: Tx,
    owner: str,
    slots: dict[str, list[str]],
    avoid: dict[str, set[str]],
    lease_seconds: float,
) -> list[Claim]:
    """Claims ready stages, best first, and offers each to a worker in the same transaction.

    `slots` lists, per capability, one worker id per free slot, best first; each claimed stage
    takes one: the worker that may still hold its attempt (re-attach) when it has a slot, else
    the first that is not in `avoid[stage id]` (workers that just declined it). Clients already
    running as many executions as their tier allows are skipped."""
    now = utcnow()
    claims: list[Claim] = []
    for capability, free_slots in slots.items():
        if not free_slots:
            continue
        candidates = _candidates(tx, capability, now, len(free_slots) * 4)
        capped = {e.client_id for _, e in candidates if e.client_concurrency}
        running = _running_per_client(tx, capped) if capped else Counter[str]()
        for stage, execution in candidates:
            if not free_slots:
                break
            cap = execution.client_concurrency
            if cap and running[execution.client_id] >= cap:
                continue
            running[execution.client_id] += 1
            worker_id = _pick(free_slots, stage.reattach_worker, avoid.get(stage.id, set()))
            claims.append(_claim_one(tx, stage, execution, owner, now, lease_seconds, worker_id))
    return claims


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
    move_stage(stage, "running")
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
    if execution.status == "queued":
        move_execution(execution, "running")
        execution.started_at = now
        changed += ["status", "started_at"]
        append_event(tx, execution, "EXECUTION_STARTED", message="started")
    offers = tx.one("SELECT count(*) FROM attempts WHERE stage_id = :id", {"id": stage.id})[0]
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


def renew_leases(session: Session, owner: str, stage_ids: list[str], lease_seconds: float) -> None:
    if stage_ids:
        session.execute(
            update(models.Stage)
            .where(models.Stage.id.in_(stage_ids), models.Stage.lease_owner == owner)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )


def reclaim_expired(session: Session) -> int:
    """Re-queues running stages whose lease expired (their holder died). A stage a worker had
    accepted is re-attached on that worker, which returns its result without working twice."""
    now = utcnow()
    rows = list(
        session.execute(
            select(models.Stage, models.Execution)
            .join(models.Execution, models.Stage.execution_id == models.Execution.id)
            .where(models.Stage.status == "running", models.Stage.lease_expires_at < now)
            .with_for_update(of=(models.Stage, models.Execution), skip_locked=True)
        )
    )
    for stage, execution in rows:
        attempt = session.scalar(
            select(models.Attempt).where(
                models.Attempt.stage_id == stage.id, models.Attempt.epoch == stage.epoch
            )
        )
        if attempt is not None and attempt.status == "running":
            stage.reattach_worker = attempt.worker_id
        end_attempt(
            Tx.of(session), stage.id, stage.epoch, "abandoned", error={"reason": "LEASE_EXPIRED"}
        )
        move_stage(stage, "queued")
        stage.ready_at = now
        stage.lease_owner = ""
        append_event(
            Tx.of(session),
            execution,
            "STAGE_QUEUED",
            **stage_fields(stage),
            message="its holder stopped responding; offered again",
        )
    return len(rows)


def queue_stats(session: Session) -> dict[str, Any]:
    now = utcnow()
    levels = {}
    for priority in (4, 3, 2, 1):
        depth, oldest = session.execute(
            select(func.count(), func.min(models.Stage.queued_at)).where(
                models.Stage.status == "queued", models.Stage.priority == priority
            )
        ).one()
        levels[priority] = (depth, (now - oldest).total_seconds() if oldest else 0.0)
    running = session.scalar(select(func.count()).where(models.Stage.status == "running"))
    waiting = session.scalar(select(func.count()).where(models.Stage.status == "retry_wait"))
    return {"levels": levels, "running": running or 0, "retry_waiting": waiting or 0}
