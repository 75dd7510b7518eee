"""Executions, stages and attempts as explicit state machines, the durable priority queue and
the ordered event log. Plain synchronous logic on a SQLAlchemy session; no grpc here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.errors import Violations
from orchestrator_server import models
from orchestrator_server.errors import ExecutionFinished, ExecutionNotFound

#: Seconds of waiting that lift a stage by one priority level (so low priority never starves).
AGING_SECONDS = 30.0
#: session.info key of the events a transaction appended.
APPENDED = "appended_events"
#: The event types that end an execution's log (unless it is retried).
TERMINAL_EVENTS = {"EXECUTION_SUCCEEDED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"}
#: The PostgreSQL NOTIFY channel on which replicas announce new events.
EVENTS_CHANNEL = "bitware_events"
PRIORITIES = {"low": 1, "normal": 2, "high": 3, "critical": 4}
PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}

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
NON_RETRYABLE_CLASSES = {"INVALID_INPUT", "REFUSED", "TOO_LARGE", "CANCELLED", "CORRUPT"}


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
    data.setdefault("progress", progress(execution))
    event = models.Event(
        execution_id=execution.id, sequence=execution.last_sequence, type=type_, data=data
    )
    session.add(event)
    # Handed to this process's watchers once the transaction commits (see OrchestratorServer).
    session.info.setdefault(APPENDED, []).append(event)
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at commit to every replica's listener, which wakes its watchers.
        session.execute(
            text("SELECT pg_notify(:channel, :id)"), {"channel": EVENTS_CHANNEL, "id": execution.id}
        )
    return execution.last_sequence


@dataclass(frozen=True)
class LogPage:
    events: list[models.Event]
    finished: bool
    last_sequence: int


def log_after(
    session: Session, execution_id: str, after: int, principal: Principal | None = None
) -> LogPage:
    """The next events of an execution's log after `after`, read together with whether the
    execution has finished and how long its log is (NOT_FOUND for a principal that may not see
    it)."""
    execution = (
        get(session, principal, execution_id)
        if principal is not None
        else session.get_one(models.Execution, execution_id)
    )
    events = list(
        session.scalars(
            select(models.Event)
            .where(models.Event.execution_id == execution_id, models.Event.sequence > after)
            .order_by(models.Event.sequence)
            .limit(500)
        )
    )
    return LogPage(events, execution.status in TERMINAL_EXECUTION, execution.last_sequence)


def progress(execution: models.Execution, stage_fraction: float = 0.0) -> float:
    """The share of the execution's work done, counting the running stage's own fraction."""
    if execution.status == "succeeded":
        return 1.0
    return (execution.stages_done + stage_fraction) / max(1, execution.stages_total)


# --- executions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewExecution:
    template: dict[str, Any]  # name, version, stages (dicts), execution_timeout_s
    spec: dict[str, Any]
    priority: str
    request_id: str
    client_id: str
    idempotency_key: str
    client_concurrency: int = 0


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
        client_concurrency=new.client_concurrency,
        stages_total=len(new.template["stages"]),
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
    enqueue(first, priority, now)
    append_event(session, execution, "EXECUTION_QUEUED", message="queued")
    append_event(
        session, execution, "STAGE_QUEUED", **stage_fields(first), message="waiting for a worker"
    )
    return execution


def enqueue(stage: models.Stage, priority: int, now: datetime) -> None:
    move_stage(stage, "queued")
    stage.queued_at = stage.ready_at = now
    stage.queue_key = queue_key(priority, now)


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


def get(
    session: Session, principal: Principal, execution_id: str, for_update: bool = False
) -> models.Execution:
    """The execution if the caller may see it; `for_update` locks its row (every writer locks
    the execution before its stages, so replicas on PostgreSQL never deadlock)."""
    row = (
        session.get(models.Execution, execution_id, with_for_update=for_update)
        if execution_id
        else None
    )
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
    execution = get(session, principal, execution_id, for_update=True)
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


def end_attempt(
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


def retry(session: Session, principal: Principal, execution_id: str) -> models.Execution:
    """Re-runs a failed execution from its failed stage; earlier results are kept."""
    execution = get(session, principal, execution_id, for_update=True)
    if execution.status != "failed":
        raise ExecutionFinished(
            f"execution {execution.id} is {execution.status}; only failed executions are retried",
            reason="NOT_FAILED",
        )
    failed = [s for s in stages_of(session, execution.id) if s.status == "failed"]
    if not failed:
        raise ExecutionFinished(f"execution {execution.id} has no failed stage to retry")
    first = failed[0]
    enqueue(first, execution.priority, utcnow())
    first.attempts_base, first.error, first.feedback, first.best = first.attempts, {}, "", {}
    first.epoch += 1
    first.ended_at = None
    move_execution(execution, "queued")
    execution.error, execution.ended_at, execution.outcome_reported = {}, None, False
    append_event(session, execution, "EXECUTION_QUEUED", message="retried from the failed stage")
    append_event(
        session, execution, "STAGE_QUEUED", **stage_fields(first), message="waiting for a worker"
    )
    return execution


def expire(session: Session, queue_wait_s: float) -> list[tuple[str, list[str]]]:
    """Fails executions past their deadline, and those whose stage waited in the queue longer
    than `queue_wait_s`; returns (execution id, running stage ids) for each, so the workers of
    running stages can be told to stop."""
    now = utcnow()
    expired: list[tuple[str, list[str]]] = []
    overdue = session.scalars(
        select(models.Execution)
        .where(
            models.Execution.status.in_(("queued", "running")),
            models.Execution.deadline_at < now,
        )
        .with_for_update(skip_locked=True)
    )
    waiting = session.scalars(
        select(models.Execution)
        .join(models.Stage, models.Stage.execution_id == models.Execution.id)
        .where(
            models.Stage.status == "queued",
            models.Stage.queued_at < now - timedelta(seconds=queue_wait_s),
        )
        .with_for_update(of=models.Execution, skip_locked=True)
    )
    for execution, reason, message in [
        *((e, "EXECUTION_TIMEOUT", "the execution ran past its time limit") for e in overdue),
        *((e, "QUEUE_TIMEOUT", "no worker took the stage in time") for e in waiting),
    ]:
        if execution.status in TERMINAL_EXECUTION:
            continue
        running = [s.id for s in stages_of(session, execution.id) if s.status == "running"]
        for stage in stages_of(session, execution.id):
            if stage.status in ("queued", "running", "retry_wait"):
                move_stage(stage, "failed")
                stage.epoch += 1
                stage.ended_at = now
        move_execution(execution, "failed")
        execution.error = {"reason": reason, "message": message, "retryable": True}
        execution.ended_at = now
        append_event(
            session,
            execution,
            "EXECUTION_FAILED",
            error=execution.error,
            message=f"execution failed: {message}",
        )
        expired.append((execution.id, running))
    return expired
