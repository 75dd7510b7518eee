"""Jobs: one per (execution, stage, attempt), so a repeated Process finds the stored result
instead of generating twice; their structures are stored as element trees."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.domain import JobStatus, StageOutcome
from bitware_core.sql import Tx, insert_rows, new_row, select_rows, update_row, values_of
from granulator_server import models
from granulator_server.domain import QualityReport, to_elements
from granulator_server.errors import JobNotFound, NoStructure


def find(tx: Tx, execution_id: str, stage_id: str, attempt: int) -> models.Job | None:
    rows = select_rows(
        tx,
        models.Job,
        "execution_id = :execution_id AND stage_id = :stage_id AND attempt = :attempt",
        {"execution_id": execution_id, "stage_id": stage_id, "attempt": attempt},
    )
    return rows[0] if rows else None


def start(
    tx: Tx,
    *,
    client_id: str,
    execution_id: str,
    stage_id: str,
    attempt: int,
    action: str,
    spec: dict[str, Any],
    structure_type: str,
    template_name: str,
    worker_id: str,
    known_new: bool = False,
) -> models.Job:
    """The attempt's job, made running on `worker_id`; one left behind by an interrupted run
    is reused. `known_new`: the caller has just seen that no job exists for the attempt (the
    Handshake looked), so the lookup is skipped."""
    job = None if known_new else find(tx, execution_id, stage_id, attempt)
    if job is not None:
        job.status, job.worker_id, job.updated_at = JobStatus.RUNNING, worker_id, utcnow()
        update_row(tx, job, "status", "worker_id", "updated_at")
        return job
    job = new_row(
        models.Job,
        id=new_id("job"),
        client_id=client_id,
        execution_id=execution_id,
        stage_id=stage_id,
        attempt=attempt,
        action=action,
        spec=spec,
        structure_type=structure_type,
        template_name=template_name,
        worker_id=worker_id,
    )
    insert_rows(tx, models.Job, [values_of(job)])
    return job


def quality_dict(report: QualityReport) -> dict[str, Any]:
    return {
        "score": report.score,
        "components": report.components,
        "feedback": report.feedback,
        "violations": [asdict(v) for v in report.violations],
    }


#: The columns `complete` writes of each element row (its id is the database's).
ELEMENT_COLUMNS = ("job_id", "position", "parent_position", "kind", "order", "title", "payload")


def complete(
    tx: Tx,
    job_id: str,
    *,
    document: dict[str, Any],
    report: QualityReport,
    result: StageOutcome,
    unusable: str = "",
) -> models.Job:
    """Stores a generated structure with its element tree and first (rules) validation. An
    `unusable` structure (the reason why) is stored all the same, so that it can be read, but
    its job ends failed."""
    job = _locked(tx, job_id)
    tx.execute("DELETE FROM elements WHERE job_id = :id", {"id": job_id})
    elements = to_elements(job.structure_type, document)
    tx.insert_values(
        "elements",
        ELEMENT_COLUMNS,
        [
            (job_id, e.index, e.parent_index, e.kind, e.order, e.title, tx.json(e.payload))
            for e in elements
        ],
    )
    quality = quality_dict(report)
    job.status = JobStatus.FAILED if unusable else JobStatus.COMPLETED
    job.error_message = unusable[:2000]
    job.document, job.quality, job.usage = document, quality, result.usage.to_json()
    job.validations = [*job.validations, validation_record("rules", quality)]
    job.element_count = len(elements)
    job.result = result.with_metrics(elements=len(elements)).to_json()
    job.updated_at = utcnow()
    update_row(
        tx,
        job,
        "status",
        "error_message",
        "document",
        "quality",
        "usage",
        "validations",
        "element_count",
        "result",
        "updated_at",
    )
    return job


def validation_record(validator: str, quality: dict[str, Any]) -> dict[str, Any]:
    return {"time": utcnow().isoformat(), "validator": validator, "quality": quality}


def record_validations(
    tx: Tx, job_id: str, records: list[dict[str, Any]], latest: dict[str, Any]
) -> None:
    """Appends validation records to a job's history; `latest` becomes its quality."""
    job = _locked(tx, job_id)
    job.validations = [*job.validations, *records]
    job.quality, job.updated_at = latest, utcnow()
    update_row(tx, job, "validations", "quality", "updated_at")


def finish_validation(
    tx: Tx,
    job_id: str,
    outcome: StageOutcome,
) -> None:
    """Completes a `validate` job (it stores no structure of its own)."""
    job = _locked(tx, job_id)
    job.status, job.result = JobStatus.COMPLETED, outcome.to_json()
    job.quality, job.usage = outcome.quality.to_json(), outcome.usage.to_json()
    job.updated_at = utcnow()
    update_row(tx, job, "status", "quality", "usage", "result", "updated_at")


def fail(
    tx: Tx,
    job_id: str,
    status: JobStatus,
    message: str,
    outcome: StageOutcome,
) -> None:
    """Ends a job that failed or was cancelled, with what it used (if anything)."""
    job = _locked(tx, job_id)
    job.status, job.error_message, job.updated_at = status, message, utcnow()
    job.result = outcome.to_json()
    if outcome.usage:
        job.usage = outcome.usage.to_json()
    update_row(tx, job, "status", "error_message", "result", "updated_at", "usage")


def _fail_running(tx: Tx, where: str, params: dict[str, Any], outcome: StageOutcome) -> int:
    assert outcome.error is not None
    cursor = tx.execute(
        "UPDATE jobs SET status = 'failed', error_message = :message, result = :result,"
        f" updated_at = :now WHERE status = 'running' AND {where}",
        {
            **params,
            "message": outcome.error.message,
            "result": tx.json(outcome.to_json()),
            "now": tx.ts(utcnow()),
        },
    )
    return int(cursor.rowcount)


def end_left_running(tx: Tx, worker_id: str, outcome: StageOutcome) -> int:
    """Fails the jobs still `running` on `worker_id`, with `outcome` as their result, and
    returns how many. Call it before the process takes work: then every such job belongs to a
    previous process of the same worker, which died (other granulators' jobs are not touched)."""
    return _fail_running(tx, "worker_id = :worker_id", {"worker_id": worker_id}, outcome)


def touch_running(tx: Tx, worker_id: str) -> None:
    """Marks the jobs `worker_id` is running as alive now (`updated_at`)."""
    tx.execute(
        "UPDATE jobs SET updated_at = :now WHERE status = 'running' AND worker_id = :worker_id",
        {"now": tx.ts(utcnow()), "worker_id": worker_id},
    )


def end_stale(tx: Tx, before: datetime, outcome: StageOutcome) -> int:
    """Fails, with `outcome`, the jobs still `running` that nobody has marked alive since
    `before` (their granulator died and will not come back under the same worker id, e.g. a
    replaced pod); how many."""
    return _fail_running(tx, "updated_at < :before", {"before": tx.ts(before)}, outcome)


def get(session: Session, principal: Principal, job_id: str) -> models.Job:
    job = session.get(models.Job, job_id) if job_id else None
    if job is None or not principal.visible_client(job.client_id):
        raise JobNotFound(job_id)
    return job


def elements_of(session: Session, job_id: str) -> list[models.Element]:
    return list(
        session.scalars(
            select(models.Element)
            .where(models.Element.job_id == job_id)
            .order_by(models.Element.position)
        )
    )


def structure(
    session: Session, principal: Principal, job_id: str
) -> tuple[models.Job, list[models.Element]]:
    """A job with the elements of the structure it stored. NOT_FOUND as `get`; NO_STRUCTURE for
    a review job (naming the job whose structure it reviewed) and for a job that stored none
    (a failed job keeps one it made below the quality minimum)."""
    job = get(session, principal, job_id)
    if job.action == "validate":
        raise NoStructure(job.id, job.status, structure_job_id=job.result.get("job_id", ""))
    if not job.document:
        raise NoStructure(job.id, job.status)
    return job, elements_of(session, job.id)


def list_jobs(
    session: Session,
    principal: Principal,
    *,
    page_size: int,
    page_token: str,
    status: str,
    structure_type: str,
    execution_id: str,
) -> tuple[list[models.Job], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.Job)
    if not principal.sees_all_clients:
        query = query.where(models.Job.client_id == principal.client_id)
    if status:
        query = query.where(models.Job.status == status)
    if structure_type:
        query = query.where(models.Job.structure_type == structure_type)
    if execution_id:
        query = query.where(models.Job.execution_id == execution_id)
    query = query.order_by(models.Job.created_at.desc(), models.Job.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def _locked(tx: Tx, job_id: str) -> models.Job:
    """The job's row, locked for the rest of the transaction (PostgreSQL)."""
    [job] = select_rows(tx, models.Job, "id = :id", {"id": job_id}, tx.lock())
    return job


def by_id(tx: Tx, job_id: str) -> models.Job | None:
    rows = select_rows(tx, models.Job, "id = :id", {"id": job_id}) if job_id else []
    return rows[0] if rows else None
