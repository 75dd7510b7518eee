"""Executions, stages and attempts as explicit state machines, the durable priority queue and
the ordered event log. Plain synchronous logic on a SQLAlchemy session; no grpc here."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.errors import Violations
from orchestrator_server import models
from orchestrator_server.errors import ExecutionFinished, ExecutionNotFound, StaleAttempt

#: Seconds of waiting that lift a stage by one priority level (so low priority never starves).
AGING_SECONDS = 30.0
#: How long a claim lives without renewal; a dead holder's stages are re-queued after it.
LEASE_SECONDS = 15.0
PRIORITIES = {"low": 1, "normal": 2, "high": 3, "critical": 4}

EXECUTION_TRANSITIONS = {
    "queued": {"running", "cancelled", "failed"},
    "running": {"succeeded", "failed", "cancelled"},
    "failed": {"queued"},  # RetryExecution
    "succeeded": set(),
    "cancelled": set(),
}
STAGE_TRANSITIONS = {
    "pending": {"queued", "cancelled"},
    "queued": {"running", "cancelled", "failed"},
    "running": {"succeeded", "failed", "retry_wait", "queued", "cancelled"},
    "retry_wait": {"running", "cancelled", "failed"},
    "failed": {"queued"},  # RetryExecution
    "succeeded": set(),
    "cancelled": set(),
}
TERMINAL_EXECUTION = ("succeeded", "failed", "cancelled")
NON_RETRYABLE_CLASSES = {"INVALID_INPUT", "REFUSED", "TOO_LARGE", "CANCELLED"}


def _move(kind: str, row: Any, to: str, table: dict[str, set[str]]) -> None:
    if to not in table[row.status]:
        raise ExecutionFinished(f"{kind} {row.id} cannot go from {row.status} to {to}")
    row.status = to


def move_execution(row: models.Execution, to: str) -> None:
    _move("execution", row, to, EXECUTION_TRANSITIONS)


def move_stage(row: models.Stage, to: str) -> None:
    _move("stage", row, to, STAGE_TRANSITIONS)


def queue_key(priority: int, at: datetime) -> float:
    """Smaller runs first: the enqueue time, moved earlier by AGING_SECONDS per priority level.
    A low stage that waited 3 × AGING_SECONDS ranks with a critical one enqueued now."""
    return at.timestamp() - priority * AGING_SECONDS


# --- events ---------------------------------------------------------------------------------


def append_event(session: Session, execution: models.Execution, type_: str, **data: Any) -> int:
    """Appends the next event of the execution's log (sequence numbers have no gaps)."""
    execution.last_sequence += 1
    data.setdefault("execution_status", execution.status)
    data.setdefault("progress", progress(session, execution))
    session.add(
        models.Event(
            execution_id=execution.id, sequence=execution.last_sequence, type=type_, data=data
        )
    )
    return execution.last_sequence


def events_after(session: Session, execution_id: str, after: int) -> list[models.Event]:
    return list(
        session.scalars(
            select(models.Event)
            .where(models.Event.execution_id == execution_id, models.Event.sequence > after)
            .order_by(models.Event.sequence)
            .limit(500)
        )
    )


def progress(session: Session, execution: models.Execution) -> float:
    if execution.status == "succeeded":
        return 1.0
    stages = stages_of(session, execution.id)
    if not stages:
        return 0.0
    return sum(1 for s in stages if s.status == "succeeded") / len(stages)


# --- executions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewExecution:
    template: dict[str, Any]  # name, version, stages (dicts), execution_timeout_s
    spec: dict[str, Any]
    priority: str
    request_id: str
    client_id: str
    idempotency_key: str


def create(session: Session, new: NewExecution) -> models.Execution:
    problems = Violations()
    problems.check(bool(new.spec.get("topic", "").strip()), "spec.topic", "is required")
    problems.check(1 <= int(new.spec.get("granularity", 0)) <= 5, "spec.granularity", "must be 1-5")
    problems.check(bool(new.client_id), "client_id", "is required")
    problems.raise_if_any()
    if new.idempotency_key:
        existing = session.scalar(
            select(models.Execution).where(models.Execution.idempotency_key == new.idempotency_key)
        )
        if existing is not None:
            return existing
    now = utcnow()
    priority = PRIORITIES[new.priority or "normal"]
    timeout_s = float(new.template.get("execution_timeout_s") or 0)
    execution = models.Execution(
        id=new_id("exe"),
        request_id=new.request_id,
        client_id=new.client_id,
        template_name=new.template["name"],
        template_version=new.template["version"],
        spec=new.spec,
        priority=priority,
        idempotency_key=new.idempotency_key or None,
        deadline_at=now + timedelta(seconds=timeout_s) if timeout_s else None,
        created_at=now,
    )
    session.add(execution)
    for definition in sorted(new.template["stages"], key=lambda s: s["order"]):
        stage = models.Stage(
            id=new_id("stg"),
            execution_id=execution.id,
            order=definition["order"],
            name=definition["name"],
            capability=definition["capability"],
            action=definition["action"],
            structure_template=definition.get("structure_template", ""),
            params=definition.get("params", {}),
            timeout_s=definition.get("timeout_s", 120.0),
            retry_policy=definition.get("retry_policy", {}),
            min_quality=definition.get("min_quality_score", 0.0),
            priority=priority,
        )
        session.add(stage)
    session.flush()
    first = stages_of(session, execution.id)[0]
    _enqueue(first, priority, now)
    append_event(session, execution, "EXECUTION_QUEUED", message="queued")
    append_event(
        session, execution, "STAGE_QUEUED", **stage_fields(first), message="waiting for a worker"
    )
    return execution


def _enqueue(stage: models.Stage, priority: int, now: datetime) -> None:
    move_stage(stage, "queued")
    stage.queued_at = stage.ready_at = now
    stage.params = {**stage.params, "_queue_key": str(queue_key(priority, now))}


def stage_fields(stage: models.Stage) -> dict[str, Any]:
    return {
        "stage_id": stage.id,
        "stage_order": stage.order,
        "attempt": stage.attempts,
        "stage_status": stage.status,
    }


def stages_of(session: Session, execution_id: str) -> list[models.Stage]:
    return list(
        session.scalars(
            select(models.Stage)
            .where(models.Stage.execution_id == execution_id)
            .order_by(models.Stage.order)
        )
    )


def attempts_of(session: Session, stage_ids: list[str]) -> list[models.Attempt]:
    return list(
        session.scalars(
            select(models.Attempt)
            .where(models.Attempt.stage_id.in_(stage_ids))
            .order_by(models.Attempt.stage_id, models.Attempt.number)
        )
    )


def get(session: Session, principal: Principal, execution_id: str) -> models.Execution:
    row = session.get(models.Execution, execution_id) if execution_id else None
    if row is None or not principal.visible_client(row.client_id):
        raise ExecutionNotFound(f"execution {execution_id!r} not found")
    return row


def list_executions(
    session: Session,
    principal: Principal,
    page_size: int,
    page_token: str,
    status: str,
    client_id: str,
) -> tuple[list[models.Execution], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.Execution)
    if not principal.sees_all_clients:
        query = query.where(models.Execution.client_id == principal.client_id)
    elif client_id:
        query = query.where(models.Execution.client_id == client_id)
    if status:
        query = query.where(models.Execution.status == status)
    query = query.order_by(models.Execution.created_at.desc(), models.Execution.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def cancel(
    session: Session, principal: Principal, execution_id: str, reason: str
) -> tuple[models.Execution, list[models.Stage]]:
    """Cancels the execution; returns the stages that were running (their workers must be told)."""
    execution = get(session, principal, execution_id)
    if execution.status in TERMINAL_EXECUTION:
        raise ExecutionFinished(f"execution {execution.id} is already {execution.status}")
    running = []
    for stage in stages_of(session, execution.id):
        if stage.status in ("pending", "queued", "running", "retry_wait"):
            if stage.status == "running":
                running.append(stage)
            move_stage(stage, "cancelled")
            stage.epoch += 1  # any late result of the running attempt is now stale
            stage.ended_at = utcnow()
    move_execution(execution, "cancelled")
    execution.ended_at = utcnow()
    execution.error = {"reason": "CANCELLED", "message": reason or "cancelled", "retryable": False}
    append_event(session, execution, "EXECUTION_CANCELLED", message=reason or "cancelled")
    return execution, running


# --- the queue ------------------------------------------------------------------------------


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
    previous_job_id: str
    feedback: str
    min_quality: float


def claim(session: Session, owner: str, capacity: dict[str, int]) -> list[Claim]:
    """Claims ready stages, best first, up to the free capacity per capability."""
    now = utcnow()
    claims: list[Claim] = []
    for capability, free in capacity.items():
        if free <= 0:
            continue
        rows = list(
            session.scalars(
                select(models.Stage)
                .where(
                    models.Stage.status.in_(("queued", "retry_wait")),
                    models.Stage.ready_at <= now,
                    models.Stage.capability == capability,
                )
                .order_by(models.Stage.ready_at)
                .limit(free * 4)
                .with_for_update(skip_locked=True)
            )
        )
        rows.sort(key=lambda s: float(s.params.get("_queue_key", 0)))
        for stage in rows[:free]:
            claims.append(_claim_one(session, stage, owner, now))
    return claims


def _claim_one(session: Session, stage: models.Stage, owner: str, now: datetime) -> Claim:
    execution = session.get_one(models.Execution, stage.execution_id)
    move_stage(stage, "running")
    stage.attempts += 1
    stage.epoch += 1
    stage.lease_owner = owner
    stage.lease_expires_at = now + timedelta(seconds=LEASE_SECONDS)
    stage.started_at = stage.started_at or now
    if execution.status == "queued":
        move_execution(execution, "running")
        execution.started_at = now
        append_event(session, execution, "EXECUTION_STARTED", message="started")
    previous = None
    if stage.order > 1:
        previous = session.scalar(
            select(models.Stage).where(
                models.Stage.execution_id == stage.execution_id,
                models.Stage.order == stage.order - 1,
            )
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
        params={k: v for k, v in stage.params.items() if not k.startswith("_")},
        timeout_s=stage.timeout_s,
        spec=execution.spec,
        previous_output=previous.output if previous else {},
        previous_job_id=previous.job_id if previous else "",
        feedback=stage.feedback,
        min_quality=stage.min_quality,
    )


def renew_leases(session: Session, owner: str, stage_ids: list[str]) -> None:
    if stage_ids:
        session.execute(
            update(models.Stage)
            .where(models.Stage.id.in_(stage_ids), models.Stage.lease_owner == owner)
            .values(lease_expires_at=utcnow() + timedelta(seconds=LEASE_SECONDS))
        )


def reclaim_expired(session: Session) -> int:
    """Re-queues running stages whose lease expired (their holder died)."""
    now = utcnow()
    rows = list(
        session.scalars(
            select(models.Stage)
            .where(models.Stage.status == "running", models.Stage.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        )
    )
    for stage in rows:
        _end_attempt(session, stage, stage.epoch, "abandoned", error={"reason": "LEASE_EXPIRED"})
        move_stage(stage, "queued")
        stage.ready_at = now
        stage.lease_owner = ""
        stage.epoch += 1
        execution = session.get_one(models.Execution, stage.execution_id)
        append_event(
            session,
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


# --- attempt outcomes -----------------------------------------------------------------------


def _current(session: Session, stage_id: str, epoch: int) -> tuple[models.Stage, models.Execution]:
    stage = session.get_one(models.Stage, stage_id)
    if stage.epoch != epoch or stage.status != "running":
        raise StaleAttempt(f"stage {stage_id} attempt epoch {epoch} is no longer current")
    return stage, session.get_one(models.Execution, stage.execution_id)


def _end_attempt(
    session: Session, stage: models.Stage, epoch: int, status: str, **values: Any
) -> None:
    attempt = session.scalar(
        select(models.Attempt).where(
            models.Attempt.stage_id == stage.id, models.Attempt.epoch == epoch
        )
    )
    if attempt is not None and attempt.ended_at is None:
        attempt.status = status
        attempt.ended_at = utcnow()
        for key, value in values.items():
            setattr(attempt, key, value)


def record_offer(session: Session, claim_: Claim, worker_id: str) -> None:
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    offers = session.scalar(select(func.count()).where(models.Attempt.stage_id == stage.id))
    session.add(
        models.Attempt(
            stage_id=stage.id, number=(offers or 0) + 1, epoch=claim_.epoch, worker_id=worker_id
        )
    )
    append_event(
        session,
        execution,
        "STAGE_OFFERED",
        **stage_fields(stage),
        worker_id=worker_id,
        message=f"offered to {worker_id}",
    )


def record_accept(session: Session, claim_: Claim, worker_id: str) -> None:
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    attempt = session.scalar(
        select(models.Attempt).where(
            models.Attempt.stage_id == stage.id, models.Attempt.epoch == claim_.epoch
        )
    )
    if attempt is not None:
        attempt.status = "running"
    append_event(
        session,
        execution,
        "STAGE_ACCEPTED",
        **stage_fields(stage),
        worker_id=worker_id,
        message=f"{worker_id} accepted",
    )


def record_progress(
    session: Session, claim_: Claim, phase: str, message: str, fraction: float
) -> None:
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    stages = stages_of(session, execution.id)
    done = sum(1 for s in stages if s.status == "succeeded")
    append_event(
        session,
        execution,
        "STAGE_PROGRESS",
        **stage_fields(stage),
        phase=phase,
        message=message,
        progress=(done + fraction) / len(stages),
    )


def record_decline(
    session: Session,
    claim_: Claim,
    worker_id: str,
    reason: str,
    message: str,
    retry_after: float,
    final: bool,
) -> None:
    """A decline costs no attempt: the stage goes back to the queue (after retry_after), or
    fails for good when the input itself is invalid."""
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    _end_attempt(
        session, stage, claim_.epoch, "declined", error={"reason": reason, "message": message}
    )
    append_event(
        session,
        execution,
        "STAGE_DECLINED",
        **stage_fields(stage),
        worker_id=worker_id,
        message=f"{worker_id} declined: {message}",
        error={"reason": reason, "message": message},
    )
    stage.attempts -= 1
    if final:
        _fail_stage(
            session, stage, execution, {"reason": reason, "message": message, "retryable": False}
        )
        return
    move_stage(stage, "queued")
    stage.ready_at = utcnow() + timedelta(seconds=retry_after)
    stage.lease_owner = ""


def _backoff(policy: dict[str, Any], attempt: int, hint: float) -> float:
    base = float(policy.get("initial_backoff_s", 0.5))
    cap = float(policy.get("max_backoff_s", 10.0))
    factor = float(policy.get("backoff_multiplier", 2.0))
    delay = min(cap, base * factor ** max(0, attempt - 1))
    delay = random.uniform(delay / 2, delay)  # jitter spreads retries of many stages apart
    return max(delay, hint)


def add_usage(total: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    merged = dict(total)
    for key in ("prompt_tokens", "completion_tokens", "worker_time_ms", "llm_calls"):
        merged[key] = int(merged.get(key, 0)) + int(usage.get(key, 0))
    merged["cost_usd"] = float(merged.get("cost_usd", 0.0)) + float(usage.get("cost_usd", 0.0))
    for key in ("model", "provider"):
        if usage.get(key):
            merged[key] = usage[key]
    return merged


@dataclass(frozen=True)
class Finished:
    """What the dispatcher must do after an outcome: report to KAM when the execution ended."""

    execution_id: str
    terminal: bool


def record_result(
    session: Session,
    claim_: Claim,
    *,
    output: dict[str, Any],
    job_id: str,
    quality: dict[str, Any],
    usage: dict[str, Any],
) -> Finished:
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    score = float(quality.get("score", 0.0))
    stage.usage = add_usage(stage.usage, usage)
    execution.usage = add_usage(execution.usage, usage)
    below = stage.min_quality > 0 and score < stage.min_quality
    if not stage.best or score > float(stage.best.get("quality", {}).get("score", -1)):
        stage.best = {"output": output, "job_id": job_id, "quality": quality}
    max_attempts = int(stage.retry_policy.get("max_attempts", 1))
    if below and stage.attempts < max_attempts:
        _end_attempt(
            session, stage, claim_.epoch, "below_quality", usage=usage, quality_score=score
        )
        stage.feedback = str(quality.get("feedback", ""))
        append_event(
            session,
            execution,
            "QUALITY_BELOW_THRESHOLD",
            **stage_fields(stage),
            message=f"quality {score:.0f} below {stage.min_quality:.0f}; regenerating",
        )
        move_stage(stage, "retry_wait")
        stage.ready_at = utcnow()
        return Finished(execution.id, False)
    _end_attempt(session, stage, claim_.epoch, "succeeded", usage=usage, quality_score=score)
    best = stage.best
    stage.output, stage.job_id = best["output"], best["job_id"]
    stage.quality = {**best["quality"], "below_threshold": below}
    move_stage(stage, "succeeded")
    stage.ended_at = utcnow()
    append_event(
        session,
        execution,
        "STAGE_SUCCEEDED",
        **stage_fields(stage),
        usage=execution.usage,
        message=f"stage {stage.name} done (quality {float(best['quality'].get('score', 0)):.0f})",
    )
    following = session.scalar(
        select(models.Stage).where(
            models.Stage.execution_id == execution.id, models.Stage.order == stage.order + 1
        )
    )
    if following is not None:
        _enqueue(following, execution.priority, utcnow())
        append_event(
            session,
            execution,
            "STAGE_QUEUED",
            **stage_fields(following),
            message="waiting for a worker",
        )
        return Finished(execution.id, False)
    move_execution(execution, "succeeded")
    execution.ended_at = utcnow()
    execution.job_id = stage.job_id
    append_event(
        session,
        execution,
        "EXECUTION_SUCCEEDED",
        usage=execution.usage,
        message="execution succeeded",
        progress=1.0,
    )
    return Finished(execution.id, True)


def record_failure(
    session: Session,
    claim_: Claim,
    *,
    error_class: str,
    reason: str,
    message: str,
    retry_after: float,
    usage: dict[str, Any],
    status: str = "failed",
) -> Finished:
    stage, execution = _current(session, claim_.stage_id, claim_.epoch)
    error = {
        "reason": reason,
        "message": message,
        "retryable": error_class not in NON_RETRYABLE_CLASSES,
    }
    stage.usage = add_usage(stage.usage, usage)
    execution.usage = add_usage(execution.usage, usage)
    _end_attempt(session, stage, claim_.epoch, status, usage=usage, error=error)
    policy = stage.retry_policy
    non_retryable = set(policy.get("non_retryable_errors", [])) | NON_RETRYABLE_CLASSES
    if error_class not in non_retryable and stage.attempts < int(policy.get("max_attempts", 1)):
        delay = _backoff(policy, stage.attempts, retry_after)
        move_stage(stage, "retry_wait")
        stage.ready_at = utcnow() + timedelta(seconds=delay)
        stage.lease_owner = ""
        append_event(
            session,
            execution,
            "STAGE_RETRY_SCHEDULED",
            **stage_fields(stage),
            error=error,
            message=f"attempt {stage.attempts} failed ({reason}); retrying in {delay:.1f}s",
        )
        return Finished(execution.id, False)
    _fail_stage(session, stage, execution, error)
    return Finished(execution.id, True)


def _fail_stage(
    session: Session, stage: models.Stage, execution: models.Execution, error: dict[str, Any]
) -> None:
    move_stage(stage, "failed")
    stage.error = error
    stage.ended_at = utcnow()
    append_event(
        session,
        execution,
        "STAGE_FAILED",
        **stage_fields(stage),
        error=error,
        message=f"stage {stage.name} failed: {error['message']}",
    )
    for later in stages_of(session, execution.id):
        if later.status == "pending":
            move_stage(later, "cancelled")
    move_execution(execution, "failed")
    execution.error = error
    execution.ended_at = utcnow()
    append_event(
        session,
        execution,
        "EXECUTION_FAILED",
        error=error,
        message=f"execution failed: {error['message']}",
    )


def unreported(session: Session) -> list[models.Execution]:
    return list(
        session.scalars(
            select(models.Execution)
            .where(
                models.Execution.status.in_(TERMINAL_EXECUTION),
                models.Execution.outcome_reported.is_(False),
                models.Execution.request_id != "",
            )
            .limit(50)
        )
    )


def mark_reported(session: Session, execution_id: str) -> None:
    session.get_one(models.Execution, execution_id).outcome_reported = True
