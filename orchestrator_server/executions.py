"""Executions, stages and attempts as explicit state machines (their statuses and moves are
`bitware_core.domain.status`): creating an execution with its stages, the queue key and fair
turns of what is enqueued, the ordered event log, reading, cancelling, retrying and expiring
executions. The claim itself is in `queue`, what becomes of
an attempt in `outcomes`.

Plain synchronous logic, no grpc: the per-stage path on a `Tx` (hand-written SQL), reading,
cancelling and retrying on a SQLAlchemy session (`Tx.of(session)` where both meet)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.domain import AttemptStatus, ExecutionStatus, PipelineTemplate, StageStatus
from bitware_core.errors import FieldViolation, Violations
from bitware_core.pipelines import stage_order_problems
from bitware_core.sql import Tx, insert_rows, new_row, select_rows, update_row, values_of
from orchestrator_server import models
from orchestrator_server.errors import (
    ExecutionFinished,
    ExecutionNotFailed,
    ExecutionNotFound,
    TemplateDeprecated,
    TemplateInvalid,
)

#: Seconds of waiting that lift a stage by one priority level (so low priority never starves).
AGING_SECONDS = 30.0
#: Added to the queue key of an execution that waits for its client's turn (see `take_turn`):
#: it sorts after every ready stage (keys are epoch seconds, ~2e9), so claims never scan it.
WAITING_TURN = 1e12
#: session.info key of the events a transaction appended.
APPENDED = "appended_events"
#: tx.info key of the executions whose watchers a transaction has notified.
NOTIFIED = "notified_executions"
#: The event types that end an execution's log (unless it is retried).
TERMINAL_EVENTS = {"EXECUTION_SUCCEEDED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"}
#: The PostgreSQL NOTIFY channel on which replicas announce new events.
EVENTS_CHANNEL = "bitware_events"
PRIORITIES = {"low": 1, "normal": 2, "high": 3, "critical": 4}
PRIORITY_NAMES = {number: name for name, number in PRIORITIES.items()}

#: Stages a cancel ends: not yet ended. Stages a timeout fails: ever queued, not yet ended.
_OPEN = (StageStatus.PENDING, StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.RETRY_WAIT)
_STARTED = (StageStatus.QUEUED, StageStatus.RUNNING, StageStatus.RETRY_WAIT)
NON_RETRYABLE_CLASSES = {"INVALID_INPUT", "REFUSED", "TOO_LARGE", "CANCELLED", "CORRUPT"}


def move_execution(row: models.Execution, to: ExecutionStatus) -> None:
    """Moves an execution to `to`, if its status allows that (`ExecutionStatus.can_move_to`)."""
    if not ExecutionStatus(row.status).can_move_to(to):
        message = f"execution {row.id} cannot go from {row.status} to {to}"
        raise ExecutionFinished(row.id, row.status, message)
    row.status = to


def move_stage(row: models.Stage, to: StageStatus) -> None:
    """Moves a stage to `to`, if its status allows that (`StageStatus.can_move_to`)."""
    if not StageStatus(row.status).can_move_to(to):
        message = f"stage {row.id} cannot go from {row.status} to {to}"
        raise ExecutionFinished(row.execution_id, row.status, message)
    row.status = to


def queue_key(priority: int, at: datetime) -> float:
    """Smaller runs first: the enqueue time, moved earlier by AGING_SECONDS per priority level.
    A low stage that waited 3 × AGING_SECONDS ranks with a critical one enqueued now."""
    return at.timestamp() - priority * AGING_SECONDS


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedEvent:
    """One event of an execution's log, as written and as read back."""

    execution_id: str
    sequence: int
    type: str
    data: dict[str, Any]
    at: datetime


def append_event(tx: Tx, execution: models.Execution, type_: str, **data: Any) -> int:
    """Appends the next event of the execution's log (sequence numbers have no gaps). The
    caller writes `execution.last_sequence` back (the ORM does so for a session's objects)."""
    execution.last_sequence += 1
    data.setdefault("execution_status", execution.status)
    data.setdefault("progress", progress(execution))
    event = LoggedEvent(execution.id, execution.last_sequence, type_, data, utcnow())
    tx.execute(
        "INSERT INTO events (execution_id, sequence, at, type, data)"
        " VALUES (:execution_id, :sequence, :at, :type, :data)",
        {
            "execution_id": event.execution_id,
            "sequence": event.sequence,
            "at": tx.ts(event.at),
            "type": type_,
            "data": tx.json(data),
        },
    )
    # Handed to this process's watchers once the transaction commits (see OrchestratorServer).
    tx.info.setdefault(APPENDED, []).append(event)
    notified = tx.info.setdefault(NOTIFIED, set())
    if tx.postgres and execution.id not in notified:
        # Delivered at commit to every replica's listener, which wakes its watchers: once per
        # transaction and execution (PostgreSQL folds repeats anyway, each at a round trip).
        tx.execute(
            "SELECT pg_notify(:channel, :payload)",
            {"channel": EVENTS_CHANNEL, "payload": f"{execution.id} {execution.last_sequence}"},
        )
        notified.add(execution.id)
    return execution.last_sequence


@dataclass(frozen=True)
class LogPage:
    events: list[LoggedEvent]
    finished: bool
    last_sequence: int


def log_after(tx: Tx, execution_id: str, after: int, principal: Principal | None = None) -> LogPage:
    """The next events of an execution's log after `after`, read together with whether the
    execution has finished and how long its log is (NOT_FOUND for a principal that may not see
    it)."""
    row = tx.one(
        "SELECT client_id, status, last_sequence FROM executions WHERE id = :id",
        {"id": execution_id},
    )
    if row is None or (principal is not None and not principal.visible_client(row[0])):
        raise ExecutionNotFound(execution_id)
    events = [
        LoggedEvent(execution_id, sequence, type_, tx.loads(data), tx.when(at) or utcnow())
        for sequence, type_, data, at in tx.all(
            "SELECT sequence, type, data, at FROM events"
            " WHERE execution_id = :id AND sequence > :after ORDER BY sequence LIMIT 500",
            {"id": execution_id, "after": after},
        )
    ]
    return LogPage(events, ExecutionStatus(row[1]).terminal, row[2])


def load_full(
    tx: Tx, execution_id: str
) -> tuple[models.Execution, list[models.Stage], list[models.Attempt]]:
    """An execution with its stages and their attempts (detached objects)."""
    [execution] = select_rows(tx, models.Execution, "id = :id", {"id": execution_id})
    stages = select_rows(
        tx, models.Stage, 'execution_id = :id ORDER BY "order"', {"id": execution_id}
    )
    attempts = select_rows(
        tx,
        models.Attempt,
        "stage_id IN (SELECT id FROM stages WHERE execution_id = :id) ORDER BY stage_id, number",
        {"id": execution_id},
    )
    return execution, stages, attempts


def progress(execution: models.Execution, stage_fraction: float = 0.0) -> float:
    """The share of the execution's work done, counting the running stage's own fraction."""
    if execution.status == ExecutionStatus.SUCCEEDED:
        return 1.0
    return (execution.stages_done + stage_fraction) / max(1, execution.stages_total)


# --- executions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewExecution:
    template: PipelineTemplate
    spec: dict[str, Any]
    priority: str
    request_id: str
    client_id: str
    idempotency_key: str
    client_concurrency: int = 0


def create(tx: Tx, new: NewExecution) -> str:
    """Stores a new execution with its stages, the first one queued; returns its id (that of
    the existing execution for a known idempotency key)."""
    return start(tx, new)[0].id


def start(
    tx: Tx, new: NewExecution
) -> tuple[models.Execution, list[models.Stage], list[models.Attempt]]:
    """`create`, returning the execution with its stages and attempts (as `load_full` reads
    them): those of the existing execution for a known idempotency key, read from the
    database; a new one's as written, without reading them back. A deprecated template
    starts nothing, not even a known idempotency key's execution."""
    template = new.template
    if template.deprecated:
        raise TemplateDeprecated(template.name, template.version)
    problems = Violations()
    problems.check(bool(new.spec.get("topic", "").strip()), "spec.topic", "is required")
    problems.check(1 <= int(new.spec.get("granularity", 0)) <= 5, "spec.granularity", "must be 1-5")
    problems.check(bool(new.client_id), "client_id", "is required")
    problems.raise_if_any()
    _check_stages(template)
    if new.idempotency_key:
        existing = tx.one(
            "SELECT id FROM executions WHERE client_id = :client AND idempotency_key = :key",
            {"client": new.client_id, "key": new.idempotency_key},
        )
        if existing is not None:
            return load_full(tx, str(existing[0]))
    now = utcnow()
    priority = PRIORITIES[new.priority or "normal"]
    timeout_s = template.execution_timeout_s
    execution = new_row(
        models.Execution,
        id=new_id("exe"),
        request_id=new.request_id,
        client_id=new.client_id,
        template_name=template.name,
        template_version=template.version,
        spec=new.spec,
        priority=priority,
        idempotency_key=new.idempotency_key or None,
        client_concurrency=new.client_concurrency,
        stages_total=len(template.stages),
        deadline_at=now + timedelta(seconds=timeout_s) if timeout_s else None,
        created_at=now,
    )
    stages = [
        new_row(
            models.Stage,
            id=new_id("stg"),
            execution_id=execution.id,
            client_id=new.client_id,
            order=definition.order,
            name=definition.name,
            capability=definition.capability,
            action=definition.action,
            structure_template=definition.structure_template,
            params=dict(definition.params),
            timeout_s=definition.timeout_s,
            retry_policy=definition.retry_policy.to_json(),
            min_quality=definition.min_quality_score,
            priority=priority,
        )
        for definition in sorted(template.stages, key=lambda s: s.order)
    ]
    first = stages[0]
    enqueue(first, priority, now)
    waits = bool(new.client_concurrency) and (
        _ready_starts(tx, new.client_id) >= new.client_concurrency
    )
    if waits:
        first.queue_key += WAITING_TURN
    append_event(tx, execution, "EXECUTION_QUEUED", message="queued")
    append_event(
        tx,
        execution,
        "STAGE_QUEUED",
        **stage_fields(first),
        message="waiting for the client's turn" if waits else "waiting for a worker",
    )
    insert_rows(tx, models.Execution, [values_of(execution)])
    insert_rows(tx, models.Stage, [values_of(stage) for stage in stages])
    return execution, stages, []


def _check_stages(template: PipelineTemplate) -> None:
    """KAM validates templates when they are created; this refuses one stored before that rule
    (or written around KAM) whose stages are not numbered 1..N: each stage queues the one whose
    order follows it, so a gap would end the execution as succeeded with stages never run."""
    problems = stage_order_problems([stage.order for stage in template.stages])
    if template.stages and not problems:
        return
    raise TemplateInvalid(
        template.name,
        template.version,
        [FieldViolation(f"template.stages[{index}].order", problem) for index, problem in problems],
    )


def enqueue(stage: models.Stage, priority: int, now: datetime) -> None:
    move_stage(stage, StageStatus.QUEUED)
    stage.queued_at = stage.ready_at = now
    stage.queue_key = queue_key(priority, now)


# --- client turns ---------------------------------------------------------------------------
#
# A client with a concurrency limit (its tier's) has at most that many executions that have not
# started yet in the ready queue; the rest wait for their turn, keyed past every ready stage.
# Each time one of its ready executions starts (or leaves the queue), its best waiting one
# (priority, then age) joins the ready queue keyed as if enqueued now. So a client with 1,000
# executions queued takes turns with a client that has one, instead of keeping it waiting behind
# all 1,000; and claims stay one indexed range scan over ready stages.


#: How many of a client's executions wait in the ready queue to start: its ready stages (one
#: range of the client's queue index, at most its limit of not-started executions plus the next
#: stages of its running ones), each execution looked up by its key. Not a join: on a
#: PostgreSQL database without statistics (fresh, or filled faster than it is analyzed) the
#: planner took the join as a nested loop over every queued execution of every client for each
#: ready stage (~50 × 10,000 rows at 10,000 queued: ~0.25 s per ExecutePipeline); a scalar
#: subquery on the primary key has no such plan.
READY_STARTS = (
    "SELECT count(*) FROM stages s"
    " WHERE s.client_id = :client AND s.status = 'queued' AND s.queue_key < :turn"
    " AND (SELECT e.status FROM executions e WHERE e.id = s.execution_id) = 'queued'"
)


def _ready_starts(tx: Tx, client_id: str) -> int:
    """How many of the client's executions wait in the ready queue to start."""
    [count] = tx.one(READY_STARTS, {"client": client_id, "turn": WAITING_TURN})
    return int(count)


def take_turn(tx: Tx, client_id: str, now: datetime) -> None:
    """Lets the client's next waiting execution into the ready queue, keyed as if enqueued now
    (a row another writer holds is skipped: that one is busy leaving the queue anyway)."""
    row = tx.one(
        "SELECT id, priority FROM stages"
        " WHERE client_id = :client AND status = 'queued' AND queue_key >= :turn"
        " ORDER BY queue_key LIMIT 1" + tx.lock("SKIP LOCKED"),
        {"client": client_id, "turn": WAITING_TURN},
    )
    if row is not None:
        tx.execute(
            "UPDATE stages SET queue_key = :key, queued_at = :now, ready_at = :now WHERE id = :id",
            {"key": queue_key(row[1], now), "now": tx.ts(now), "id": row[0]},
        )


def _frees_a_turn(execution: models.Execution, stages: list[models.Stage]) -> bool:
    """True when this execution, about to leave the queue unstarted, holds one of its client's
    ready places (so the client's next waiting execution may take it)."""
    return bool(execution.client_concurrency) and any(
        s.status == StageStatus.QUEUED and s.queue_key < WAITING_TURN for s in stages
    )


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
        raise ExecutionNotFound(execution_id)
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
    if client_id := principal.acting_for(client_id):
        query = query.where(models.Execution.client_id == client_id)
    if status:
        query = query.where(models.Execution.status == status)
    query = query.order_by(models.Execution.created_at.desc(), models.Execution.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def timelines(
    session: Session, execution_ids: list[str]
) -> tuple[dict[str, list[models.Stage]], dict[str, list[models.Attempt]]]:
    """The stages and the attempts of several executions, each by execution id, in two
    statements."""
    stages: dict[str, list[models.Stage]] = {}
    attempts: dict[str, list[models.Attempt]] = {}
    if not execution_ids:
        return stages, attempts
    for stage in session.scalars(
        select(models.Stage)
        .where(models.Stage.execution_id.in_(execution_ids))
        .order_by(models.Stage.execution_id, models.Stage.order)
    ):
        stages.setdefault(stage.execution_id, []).append(stage)
    execution_of = {stage.id: stage.execution_id for group in stages.values() for stage in group}
    for attempt in session.scalars(
        select(models.Attempt)
        .where(models.Attempt.stage_id.in_(list(execution_of)))
        .order_by(models.Attempt.stage_id, models.Attempt.number)
    ):
        attempts.setdefault(execution_of[attempt.stage_id], []).append(attempt)
    return stages, attempts


def cancel(
    session: Session, principal: Principal, execution_id: str, reason: str
) -> tuple[models.Execution, list[models.Stage]]:
    """Cancels the execution; returns the stages that were running (their workers must be told)."""
    execution = get(session, principal, execution_id, for_update=True)
    if ExecutionStatus(execution.status).terminal:
        raise ExecutionFinished(execution.id, execution.status)
    running = []
    stages = stages_of(session, execution.id)
    if execution.status == ExecutionStatus.QUEUED and _frees_a_turn(execution, stages):
        take_turn(Tx.of(session), execution.client_id, utcnow())
    for stage in stages:
        if stage.status in _OPEN:
            if stage.status == StageStatus.RUNNING:
                running.append(stage)
            move_stage(stage, StageStatus.CANCELLED)
            stage.epoch += 1  # any late result of the running attempt is now stale
            stage.ended_at = utcnow()
    move_execution(execution, ExecutionStatus.CANCELLED)
    execution.ended_at = utcnow()
    execution.error = {"reason": "CANCELLED", "message": reason or "cancelled", "retryable": False}
    append_event(Tx.of(session), execution, "EXECUTION_CANCELLED", message=reason or "cancelled")
    return execution, running


def end_attempt(tx: Tx, stage_id: str, epoch: int, status: AttemptStatus, **values: Any) -> None:
    """Ends the stage's attempt of that epoch (unless it already ended), with its usage, error
    or quality score."""
    sets = "".join(f", {name} = :{name}" for name in values)
    params = {
        name: tx.json(value) if isinstance(value, dict) else value for name, value in values.items()
    }
    tx.execute(
        f"UPDATE attempts SET status = :status, ended_at = :ended_at{sets}"
        " WHERE stage_id = :stage_id AND epoch = :epoch AND ended_at IS NULL",
        {
            **params,
            "status": status,
            "ended_at": tx.ts(utcnow()),
            "stage_id": stage_id,
            "epoch": epoch,
        },
    )


def retry(
    session: Session, principal: Principal, execution_id: str, retry_number: int = 0
) -> models.Execution:
    """Re-runs a failed execution from its failed stage; earlier results are kept. With a
    `retry_number`, an execution already retried that many times is returned as it is (the
    caller's earlier attempt got through)."""
    execution = get(session, principal, execution_id, for_update=True)
    if retry_number and execution.retries >= retry_number:
        return execution
    if execution.status != ExecutionStatus.FAILED:
        raise ExecutionNotFailed(execution.id, execution.status)
    failed = [s for s in stages_of(session, execution.id) if s.status == StageStatus.FAILED]
    if not failed:
        raise ExecutionFinished(
            execution.id,
            execution.status,
            f"execution {execution.id} has no failed stage to retry",
        )
    first, now = failed[0], utcnow()
    enqueue(first, execution.priority, now)
    if execution.deadline_at is not None:
        # The new run gets the template's whole time limit again: one that ran out would
        # otherwise fail it again at once.
        execution.deadline_at = now + (execution.deadline_at - execution.created_at)
    first.attempts_base, first.error, first.feedback, first.best = first.attempts, {}, "", {}
    first.epoch += 1
    first.ended_at = None
    move_execution(execution, ExecutionStatus.QUEUED)
    execution.error, execution.ended_at, execution.outcome_reported = {}, None, False
    execution.retries += 1
    tx = Tx.of(session)
    append_event(tx, execution, "EXECUTION_QUEUED", message="retried from the failed stage")
    append_event(
        tx, execution, "STAGE_QUEUED", **stage_fields(first), message="waiting for a worker"
    )
    return execution


def retry_and_read(
    session: Session, principal: Principal, execution_id: str, retry_number: int = 0
) -> tuple[models.Execution, list[models.Stage], list[models.Attempt]]:
    """`retry`, returning the execution with its stages and attempts as the retry left them,
    read in the same transaction: once it commits, a dispatcher may claim the stage at once,
    and the caller is answered with what it did, not with what followed."""
    execution = retry(session, principal, execution_id, retry_number)
    session.flush()  # hand-written SQL on the same transaction does not flush the ORM's changes
    return load_full(Tx.of(session), execution.id)


def expire(tx: Tx, queue_wait_s: float) -> list[tuple[str, list[str]]]:
    """Fails executions past their deadline, and those whose stage waited in the queue longer
    than `queue_wait_s`; returns (execution id, running stage ids) for each, so the workers of
    running stages can be told to stop."""
    now = utcnow()
    lock = tx.lock("SKIP LOCKED")
    overdue = select_rows(
        tx,
        models.Execution,
        "status IN ('queued', 'running') AND deadline_at < :now",
        {"now": tx.ts(now)},
        lock,
    )
    # An execution waiting for its client's turn is not waiting for a worker: it does not
    # time out in the queue (its wait there starts when it takes its turn).
    waiting = select_rows(
        tx,
        models.Execution,
        # (Each priority named, so that the wait is one range of the status-priority-queued_at
        # index per priority, not a walk of every queued stage.)
        "id IN (SELECT execution_id FROM stages WHERE status = 'queued'"
        f" AND priority IN ({', '.join(map(str, PRIORITY_NAMES))})"
        " AND queued_at < :cutoff AND queue_key < :turn)",
        {"cutoff": tx.ts(now - timedelta(seconds=queue_wait_s)), "turn": WAITING_TURN},
        lock,
    )
    expired: dict[str, list[str]] = {}
    for execution, reason, message in [
        *((e, "EXECUTION_TIMEOUT", "the execution ran past its time limit") for e in overdue),
        *((e, "QUEUE_TIMEOUT", "no worker took the stage in time") for e in waiting),
    ]:
        if execution.id in expired or ExecutionStatus(execution.status).terminal:
            continue
        # The execution is held: its stages are locked after it, waiting (as every writer does).
        stages = select_rows(
            tx, models.Stage, "execution_id = :id", {"id": execution.id}, tx.lock()
        )
        expired[execution.id] = [s.id for s in stages if s.status == StageStatus.RUNNING]
        if execution.status == ExecutionStatus.QUEUED and _frees_a_turn(execution, stages):
            take_turn(tx, execution.client_id, now)
        for stage in stages:
            if stage.status in _STARTED:
                move_stage(stage, StageStatus.FAILED)
                stage.epoch += 1
                stage.ended_at = now
                update_row(tx, stage, "status", "epoch", "ended_at")
        move_execution(execution, ExecutionStatus.FAILED)
        execution.error = {"reason": reason, "message": message, "retryable": True}
        execution.ended_at = now
        append_event(
            tx,
            execution,
            "EXECUTION_FAILED",
            error=execution.error,
            message=f"execution failed: {message}",
        )
        update_row(tx, execution, "status", "error", "ended_at", "last_sequence")
    return list(expired.items())
