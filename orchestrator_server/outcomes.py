"""What becomes of a stage attempt: accepted, declined, progress, result (with the quality gate)
or failure (with the retry policy). Each checks the attempt's epoch first, so a stale attempt's
late result is refused and never overwrites a newer one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from bitware_core.db import utcnow
from bitware_core.domain import (
    AttemptStatus,
    ExecutionStatus,
    Quality,
    RetryPolicy,
    StageError,
    StageOutcome,
    StageStatus,
    Usage,
)
from bitware_core.sql import Tx, select_rows, update_row
from orchestrator_server import models, payloads
from orchestrator_server.errors import StaleAttempt
from orchestrator_server.executions import (
    NON_RETRYABLE_CLASSES,
    append_event,
    end_attempt,
    enqueue,
    move_execution,
    move_stage,
    progress,
    stage_fields,
)
from orchestrator_server.queue import Claim

# --- attempt outcomes -----------------------------------------------------------------------

#: The stage columns an outcome may change (written back together).
_STAGE_CHANGES = (
    "status",
    "attempts",
    "ready_at",
    "lease_owner",
    "usage",
    "best",
    "feedback",
    "output",
    "output_ref",
    "job_id",
    "quality",
    "error",
    "ended_at",
)
_EXECUTION_CHANGES = (
    "status",
    "last_sequence",
    "usage",
    "stages_done",
    "ended_at",
    "job_id",
    "error",
)


#: What accepting an attempt and logging its progress read of the execution and the stage:
#: what `append_event`, `progress` and `stage_fields` use, not the wide JSON columns.
_HEAD_EXECUTION = ("id", "status", "last_sequence", "stages_done", "stages_total")
_HEAD_STAGE = ("id", "order", "attempts", "status", "epoch")


def _current(
    tx: Tx, stage_id: str, epoch: int, *, head: bool = False
) -> tuple[models.Stage, models.Execution]:
    """The stage and its execution, locked (execution first, as everywhere), if the attempt is
    still the current one; otherwise StaleAttempt. With `head`, only the columns of
    `_HEAD_STAGE` and `_HEAD_EXECUTION` are read."""
    [execution] = select_rows(
        tx,
        models.Execution,
        "id = (SELECT execution_id FROM stages WHERE id = :id)",
        {"id": stage_id},
        tx.lock(),
        only=_HEAD_EXECUTION if head else (),
    )
    [stage] = select_rows(
        tx, models.Stage, "id = :id", {"id": stage_id}, tx.lock(), only=_HEAD_STAGE if head else ()
    )
    if stage.epoch != epoch or stage.status != StageStatus.RUNNING:
        raise StaleAttempt(stage_id, epoch, current_epoch=stage.epoch)
    return stage, execution


def _roll_up(stage: models.Stage, execution: models.Execution, usage: Usage) -> None:
    """An attempt's usage rolled up to its stage and execution."""
    stage.usage = (Usage.from_json(stage.usage) + usage).to_json()
    execution.usage = (Usage.from_json(execution.usage) + usage).to_json()


def _save(tx: Tx, stage: models.Stage, execution: models.Execution) -> None:
    update_row(tx, stage, *_STAGE_CHANGES)
    update_row(tx, execution, *_EXECUTION_CHANGES)


def record_accept(tx: Tx, claim: Claim, worker_id: str) -> None:
    stage, execution = _current(tx, claim.stage_id, claim.epoch, head=True)
    tx.execute(
        "UPDATE attempts SET status = 'running' WHERE stage_id = :id AND epoch = :epoch",
        {"id": stage.id, "epoch": claim.epoch},
    )
    append_event(
        tx,
        execution,
        "STAGE_ACCEPTED",
        **stage_fields(stage),
        worker_id=worker_id,
        message=f"{worker_id} accepted",
    )
    update_row(tx, execution, "last_sequence")


def record_progress(tx: Tx, claim: Claim, events: list[tuple[str, str, float]]) -> None:
    """Appends the worker's progress events (phase, message, fraction), read together, in one
    transaction."""
    stage, execution = _current(tx, claim.stage_id, claim.epoch, head=True)
    for phase, message, fraction in events:
        append_event(
            tx,
            execution,
            "STAGE_PROGRESS",
            **stage_fields(stage),
            phase=phase,
            message=message,
            progress=progress(execution, fraction),
        )
    update_row(tx, execution, "last_sequence")


def record_decline(
    tx: Tx,
    claim: Claim,
    worker_id: str,
    reason: str,
    message: str,
    retry_after: float,
    final: bool,
) -> None:
    """A decline costs no attempt: the stage goes back to the queue (after retry_after), or
    fails for good when the input itself is invalid."""
    stage, execution = _current(tx, claim.stage_id, claim.epoch)
    end_attempt(
        tx,
        stage.id,
        claim.epoch,
        AttemptStatus.DECLINED,
        error={"reason": reason, "message": message},
    )
    append_event(
        tx,
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
            tx, stage, execution, {"reason": reason, "message": message, "retryable": False}
        )
    else:
        move_stage(stage, StageStatus.QUEUED)
        stage.ready_at = utcnow() + timedelta(seconds=retry_after)
        stage.lease_owner = ""
    _save(tx, stage, execution)


@dataclass(frozen=True)
class Finished:
    """What the dispatcher must do after an outcome: report to KAM when the execution ended."""

    execution_id: str
    terminal: bool
    #: Why the stage runs again, when it does (for the retry metric).
    retry_reason: str = ""
    #: The execution as it ended (when terminal), to report to KAM straight away.
    ended: models.Execution | None = None


def record_result(tx: Tx, claim: Claim, outcome: StageOutcome) -> Finished:
    """A result: the quality gate decides whether the stage succeeds, runs again or fails
    (`QUALITY_BELOW_MINIMUM`); the best attempt so far is kept on the stage."""
    output, quality, usage = outcome.output, outcome.quality, outcome.usage
    encoded = payloads.encode(output)
    if len(encoded) > payloads.HARD_LIMIT:
        limit = f"the stage output is larger than {payloads.HARD_LIMIT // 2**20} MiB"
        return record_failure(
            tx, claim, StageError("TOO_LARGE", "OUTPUT_TOO_LARGE", limit), usage=usage
        )
    stage, execution = _current(tx, claim.stage_id, claim.epoch)
    score = quality.score
    _roll_up(stage, execution, usage)
    broken = quality.integrity_failed
    below = broken or (stage.min_quality > 0 and score < stage.min_quality)
    if not stage.best or quality.rank() > Quality.from_json(stage.best["quality"]).rank():
        inline, reference = payloads.store(tx, output, encoded)
        stage.best = {
            "output": inline,
            "output_ref": reference,
            "job_id": outcome.job_id,
            "quality": quality.to_json(),
        }
    max_attempts = RetryPolicy.from_json(stage.retry_policy).max_attempts
    if below and stage.attempts - stage.attempts_base < max_attempts:
        end_attempt(
            tx,
            stage.id,
            claim.epoch,
            AttemptStatus.BELOW_QUALITY,
            usage=usage.to_json(),
            quality_score=score,
        )
        stage.feedback = quality.feedback
        why = "breaks integrity rules" if broken else f"below {stage.min_quality:.0f}"
        append_event(
            tx,
            execution,
            "QUALITY_BELOW_THRESHOLD",
            **stage_fields(stage),
            message=f"quality {score:.0f} {why}; regenerating",
        )
        move_stage(stage, StageStatus.RETRY_WAIT)
        stage.ready_at = utcnow()
        _save(tx, stage, execution)
        return Finished(execution.id, False, "BELOW_QUALITY")
    best = stage.best
    best_quality = Quality.from_json(best["quality"])
    if below and not best_quality.deliverable_below_minimum:
        return _fail_below_minimum(tx, stage, execution, claim.epoch, usage, score)
    end_attempt(
        tx,
        stage.id,
        claim.epoch,
        AttemptStatus.SUCCEEDED,
        usage=usage.to_json(),
        quality_score=score,
    )
    stage.output, stage.output_ref, stage.job_id = (
        best["output"],
        best["output_ref"],
        best["job_id"],
    )
    stage.quality = replace(best_quality, below_threshold=below).to_json()
    move_stage(stage, StageStatus.SUCCEEDED)
    execution.stages_done += 1
    stage.ended_at = utcnow()
    append_event(
        tx,
        execution,
        "STAGE_SUCCEEDED",
        **stage_fields(stage),
        usage=execution.usage,
        message=f"stage {stage.name} done (quality {best_quality.score:.0f})",
    )
    following = select_rows(
        tx,
        models.Stage,
        'execution_id = :id AND "order" = :order',
        {"id": execution.id, "order": stage.order + 1},
    )
    if following:
        [next_stage] = following
        enqueue(next_stage, execution.priority, utcnow())
        update_row(tx, next_stage, "status", "queued_at", "ready_at", "queue_key")
        append_event(
            tx,
            execution,
            "STAGE_QUEUED",
            **stage_fields(next_stage),
            message="waiting for a worker",
        )
        _save(tx, stage, execution)
        return Finished(execution.id, False)
    move_execution(execution, ExecutionStatus.SUCCEEDED)
    execution.ended_at = utcnow()
    execution.job_id = stage.job_id
    append_event(
        tx,
        execution,
        "EXECUTION_SUCCEEDED",
        usage=execution.usage,
        message="execution succeeded",
        progress=1.0,
    )
    _save(tx, stage, execution)
    return Finished(execution.id, True, ended=execution)


def _fail_below_minimum(
    tx: Tx,
    stage: models.Stage,
    execution: models.Execution,
    epoch: int,
    usage: Usage,
    score: float,
) -> Finished:
    """No attempt is good enough: the stage fails with QUALITY_BELOW_MINIMUM. The best attempt
    stays on the stage (output, job, quality) so it can be read, but the execution names no
    deliverable."""
    best = stage.best
    quality = Quality.from_json(best["quality"])
    end_attempt(
        tx, stage.id, epoch, AttemptStatus.BELOW_QUALITY, usage=usage.to_json(), quality_score=score
    )
    stage.output, stage.output_ref, stage.job_id = (
        best["output"],
        best["output_ref"],
        best["job_id"],
    )
    stage.quality = replace(quality, below_threshold=True).to_json()
    attempts = stage.attempts - stage.attempts_base
    problem = (
        "breaks integrity rules"
        if quality.integrity_failed
        else f"scores {quality.score:.1f}, below {stage.min_quality:.0f}"
    )
    error = {
        "reason": "QUALITY_BELOW_MINIMUM",
        "message": f"no acceptable result after {attempts} attempts: the best {problem}",
        "retryable": True,
    }
    _fail_stage(tx, stage, execution, error)
    _save(tx, stage, execution)
    return Finished(execution.id, True, ended=execution)


def record_failure(
    tx: Tx,
    claim: Claim,
    failure: StageError,
    *,
    usage: Usage,
    status: AttemptStatus = AttemptStatus.FAILED,
) -> Finished:
    """A failed attempt: the stage's retry policy decides whether it runs again (after a
    backoff) or fails, and its execution with it."""
    stage, execution = _current(tx, claim.stage_id, claim.epoch)
    error_class, reason = failure.error_class, failure.reason
    error = {
        "reason": reason,
        "message": failure.message,
        "retryable": error_class not in NON_RETRYABLE_CLASSES,
    }
    _roll_up(stage, execution, usage)
    end_attempt(tx, stage.id, claim.epoch, status, usage=usage.to_json(), error=error)
    policy = RetryPolicy.from_json(stage.retry_policy)
    non_retryable = {*policy.non_retryable_errors, *NON_RETRYABLE_CLASSES}
    used = stage.attempts - stage.attempts_base
    if error_class not in non_retryable and used < policy.max_attempts:
        delay = policy.backoff(used, failure.retry_after)
        move_stage(stage, StageStatus.RETRY_WAIT)
        stage.ready_at = utcnow() + timedelta(seconds=delay)
        stage.lease_owner = ""
        append_event(
            tx,
            execution,
            "STAGE_RETRY_SCHEDULED",
            **stage_fields(stage),
            error=error,
            message=f"attempt {stage.attempts} failed ({reason}); retrying in {delay:.1f}s",
        )
        _save(tx, stage, execution)
        return Finished(execution.id, False, reason)
    _fail_stage(tx, stage, execution, error)
    _save(tx, stage, execution)
    return Finished(execution.id, True, ended=execution)


def _fail_stage(
    tx: Tx, stage: models.Stage, execution: models.Execution, error: dict[str, Any]
) -> None:
    move_stage(stage, StageStatus.FAILED)
    stage.error = error
    stage.ended_at = utcnow()
    append_event(
        tx,
        execution,
        "STAGE_FAILED",
        **stage_fields(stage),
        error=error,
        message=f"stage {stage.name} failed: {error['message']}",
    )
    # Later stages stay pending: they never ran, and RetryExecution picks up from here.
    move_execution(execution, ExecutionStatus.FAILED)
    execution.error = error
    execution.ended_at = utcnow()
    append_event(
        tx,
        execution,
        "EXECUTION_FAILED",
        error=error,
        message=f"execution failed: {error['message']}",
    )


def record_stopped(tx: Tx, claim: Claim, status: AttemptStatus, usage: Usage) -> bool:
    """An attempt the orchestrator stopped (its execution was cancelled or ran out of time) or
    whose result came too late (stale): it ends with the usage its worker reported, and that
    usage is added to its stage and execution all the same, since it was spent. Only the first
    report of an attempt counts, so nothing is added twice. When the execution had already
    been reported to KAM, it is reported again with the larger total. Returns whether the
    attempt was still open."""
    [execution] = select_rows(
        tx,
        models.Execution,
        "id = (SELECT execution_id FROM stages WHERE id = :id)",
        {"id": claim.stage_id},
        tx.lock(),
    )
    [stage] = select_rows(tx, models.Stage, "id = :id", {"id": claim.stage_id}, tx.lock())
    ended = tx.execute(
        "UPDATE attempts SET status = :status, usage = :usage, ended_at = :now"
        " WHERE stage_id = :id AND epoch = :epoch AND ended_at IS NULL",
        {
            "status": status,
            "usage": tx.json(usage.to_json()),
            "now": tx.ts(utcnow()),
            "id": stage.id,
            "epoch": claim.epoch,
        },
    )
    if ended.rowcount != 1:
        return False
    if usage:
        _roll_up(stage, execution, usage)
        execution.outcome_reported = False  # KAM hears the new total (or its first report)
        update_row(tx, stage, "usage")
        update_row(tx, execution, "usage", "outcome_reported")
    return True


def unreported(tx: Tx) -> list[models.Execution]:
    return select_rows(
        tx,
        models.Execution,
        "status IN ('succeeded', 'failed', 'cancelled') AND outcome_reported = :no"
        " AND request_id != '' LIMIT 50",
        {"no": False},
    )


def mark_reported(tx: Tx, execution_id: str, retries: int, cost_micros: int) -> None:
    """Marks the run's outcome reported, unless the execution was retried meanwhile (then the
    new run's outcome is still to be reported) or its usage grew after the report was sent (a
    stopped attempt's usage arrived: KAM must hear the new total)."""
    rows = select_rows(tx, models.Execution, "id = :id", {"id": execution_id}, tx.lock())
    if (
        rows
        and rows[0].retries == retries
        and Usage.from_json(rows[0].usage).cost_micros == cost_micros
    ):
        tx.execute(
            "UPDATE executions SET outcome_reported = :yes WHERE id = :id",
            {"yes": True, "id": execution_id},
        )
