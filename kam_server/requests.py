"""Client requests: creation with tier checks, execution with a budget reservation, and the
outcome reported back by the orchestrator (which settles the budget).

A request's life: pending → running (executed: reservation held) → completed | failed |
cancelled (settled). The orchestrator's report of an execution's end drives the last step, so
status, cost and deliverable follow the execution rather than a poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import CLIENT, Principal
from bitware_core.db import Database, new_id, next_page_token, page_window, utcnow
from bitware_core.domain import RequestStatus, Usage
from bitware_core.errors import MeshError, Violations
from bitware_core.sql import Tx, insert_rows, new_row, select_rows, update_row, values_of
from bitware_core.tiers import TIER_LIMITS
from kam_server import catalog, ledger, models, ratelimit, webhooks
from kam_server.accounts import visible_client
from kam_server.errors import (
    ClientSuspended,
    ExecutionMismatch,
    PriorityNotInTier,
    RequestFinished,
    RequestLimitReached,
    RequestNotFailed,
    RequestNotFound,
    TemplateDeprecated,
    TemplateNotInTier,
)

#: How urgent a request is → the execution's priority.
URGENCY_PRIORITY = {"low": "low", "normal": "normal", "high": "high", "critical": "critical"}
TERMINAL = tuple(status for status in RequestStatus if status.terminal)


@dataclass(frozen=True)
class NewRequest:
    topic: str
    structure_type: str
    audience: str
    granularity: int
    constraints: dict[str, str]
    options: dict[str, str]
    master_template: str
    urgency: str
    idempotency_key: str
    client_id: str


def _check_active(client: models.Client) -> None:
    if client.status != "active":
        raise ClientSuspended(client.id)


def _check_template(client: models.Client, template: models.MasterTemplate) -> None:
    if template.deprecated:
        raise TemplateDeprecated(template.name)
    if template.allowed_tiers and client.tier not in template.allowed_tiers:
        raise TemplateNotInTier(client.tier, template.name)


def _check_priority(client: models.Client, urgency: str) -> None:
    limits = TIER_LIMITS[client.tier]
    if not limits.allows_priority(URGENCY_PRIORITY[urgency]):
        raise PriorityNotInTier(client.tier, URGENCY_PRIORITY[urgency], limits.max_priority)


def _check_rate(tx: Tx, principal: Principal, client: models.Client) -> None:
    """A client's own calls draw on its tier's rate limit; staff acting for it do not."""
    if principal.tag == CLIENT:
        ratelimit.take(tx, client.id, client.tier)


def _client(tx: Tx, principal: Principal, client_id: str, lock: bool = False) -> models.Client:
    rows = select_rows(tx, models.Client, "id = :id", {"id": client_id}, tx.lock() if lock else "")
    return visible_client(principal, client_id, rows[0] if rows else None)


def _request(tx: Tx, request_id: str, lock: bool = False) -> models.ClientRequest | None:
    rows = select_rows(
        tx, models.ClientRequest, "id = :id", {"id": request_id}, tx.lock() if lock else ""
    )
    return rows[0] if rows else None


def create(tx: Tx, principal: Principal, new: NewRequest) -> models.ClientRequest:
    client_id = principal.acting_for(new.client_id)  # before anything is said about the input
    problems = Violations()
    problems.check(bool(new.topic.strip()), "spec.topic", "is required")
    problems.check(len(new.topic) <= 500, "spec.topic", "must be at most 500 characters")
    problems.check(len(new.audience) <= 200, "spec.audience", "must be at most 200 characters")
    problems.check(
        bool(new.structure_type or new.master_template),
        "spec.structure_type",
        "is required unless master_template is given",
    )
    problems.check(1 <= new.granularity <= 5, "spec.granularity", "must be from 1 to 5")
    problems.check(len(new.idempotency_key) <= 200, "idempotency_key", "is too long")
    problems.check(bool(client_id), "client_id", "is required for callers without a client")
    problems.raise_if_any()
    # The client row first, as ExecuteRequest and RetryRequest lock it: taking the rate bucket
    # first and then the client (the new request's foreign key) deadlocked against them.
    client = _client(tx, principal, client_id, lock=True)
    _check_active(client)
    _check_rate(tx, principal, client)
    if new.idempotency_key:
        existing = select_rows(
            tx,
            models.ClientRequest,
            "client_id = :client AND idempotency_key = :key",
            {"client": client.id, "key": new.idempotency_key},
        )
        if existing:
            return existing[0]
    template = catalog.get(tx, new.master_template or f"{new.structure_type}_standard")
    if new.structure_type and new.structure_type != template.structure_type:
        problems.add(
            "spec.structure_type",
            f"template {template.name!r} builds a {template.structure_type}, "
            f"not a {new.structure_type}",
        )
        problems.raise_if_any()
    _check_template(client, template)
    _check_priority(client, new.urgency)
    limits = TIER_LIMITS[client.tier]
    [this_month] = tx.one(
        "SELECT count(*) FROM requests WHERE client_id = :id AND created_at >= :start",
        {"id": client.id, "start": tx.ts(ledger.month_start())},
    )
    if this_month >= limits.max_requests_per_month:
        raise RequestLimitReached(client.id, client.tier, limits.max_requests_per_month)
    spec: dict[str, Any] = {
        "topic": new.topic.strip(),
        "structure_type": template.structure_type,
        "audience": new.audience,
        "granularity": new.granularity,
        "constraints": new.constraints,
        "options": new.options,
    }
    row = new_row(
        models.ClientRequest,
        id=new_id("req"),
        client_id=client.id,
        spec=spec,
        structure_type=template.structure_type,
        master_template=template.name,
        template_version=template.version,
        urgency=new.urgency,
        idempotency_key=new.idempotency_key or None,
    )
    insert_rows(tx, models.ClientRequest, [values_of(row)])
    return row


def get(session: Session, principal: Principal, request_id: str) -> models.ClientRequest:
    row = session.get(models.ClientRequest, request_id) if request_id else None
    if row is None or not principal.visible_client(row.client_id):
        raise RequestNotFound(request_id)
    return row


@dataclass(frozen=True)
class RequestFilter:
    status: str = ""
    client_id: str = ""
    structure_type: str = ""
    master_template: str = ""


def list_requests(
    session: Session, principal: Principal, page_size: int, page_token: str, where: RequestFilter
) -> tuple[list[models.ClientRequest], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.ClientRequest)
    if client_id := principal.acting_for(where.client_id):
        query = query.where(models.ClientRequest.client_id == client_id)
    if where.status:
        query = query.where(models.ClientRequest.status == where.status)
    if where.structure_type:
        query = query.where(models.ClientRequest.structure_type == where.structure_type)
    if where.master_template:
        query = query.where(models.ClientRequest.master_template == where.master_template)
    query = query.order_by(models.ClientRequest.created_at.desc(), models.ClientRequest.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def _locked(
    tx: Tx, principal: Principal, request_id: str
) -> tuple[models.ClientRequest, models.Client]:
    """The caller's request and its client, the client's row locked first (every budget
    decision locks it, in that order); the request is read again once the lock is held, as it
    is now that no other execution of this client decides."""
    row = _request(tx, request_id)
    if row is None or not principal.visible_client(row.client_id):
        raise RequestNotFound(request_id)
    client = _client(tx, principal, row.client_id, lock=True)
    if tx.postgres:  # SQLite has one writer, this one: the request is as it was read
        row = _request(tx, request_id)
    assert row is not None  # requests are never deleted
    return row, client


def move(row: models.ClientRequest, to: RequestStatus) -> None:
    """Moves a request to `to`, if its status allows that (`RequestStatus.can_move_to`)."""
    if not RequestStatus(row.status).can_move_to(to):
        raise RequestFinished(
            row.id, row.status, f"request {row.id} cannot go from {row.status} to {to}"
        )
    row.status = to


def begin_execution(
    tx: Tx, principal: Principal, request_id: str
) -> tuple[models.ClientRequest, models.Client]:
    """Checks client, template, tier and budget and reserves the template's cost estimate. A
    request that was executed already is returned as it is (so executing twice starts nothing
    new); the caller starts the execution only when `execution_id` is empty."""
    row, client = _locked(tx, principal, request_id)
    status = RequestStatus(row.status)
    if status == RequestStatus.RUNNING or (
        status in (RequestStatus.COMPLETED, RequestStatus.FAILED) and row.execution_id
    ):
        return row, client
    if status != RequestStatus.PENDING:
        raise RequestFinished(row.id, row.status)
    _check_active(client)
    _check_rate(tx, principal, client)
    template = catalog.get(tx, row.master_template, row.template_version)
    _check_template(client, template)
    # Over the tier's concurrency limit the execution is accepted all the same: the
    # orchestrator holds it in the queue until the client's turn (see executions.take_turn).
    ledger.reserve(client, row, template.cost_estimate_usd, ledger.committed(tx, client.id))
    move(row, RequestStatus.RUNNING)
    row.updated_at = utcnow()
    update_row(tx, row, "reserved_usd", "status", "updated_at")
    return row, client


def begin_retry(tx: Tx, principal: Principal, request_id: str) -> models.ClientRequest:
    """Checks client, template, tier and budget again for another run of a failed request's
    execution and reserves the cost estimate again; the request is running once more. What the
    earlier runs cost stays charged. The caller then asks the orchestrator to retry."""
    row, client = _locked(tx, principal, request_id)
    if row.status != RequestStatus.FAILED or not row.execution_id:
        raise RequestNotFailed(row.id, row.status)
    _check_active(client)
    _check_rate(tx, principal, client)
    template = catalog.get(tx, row.master_template, row.template_version)
    _check_template(client, template)
    _check_priority(client, row.urgency)
    ledger.reserve(client, row, template.cost_estimate_usd, ledger.committed(tx, client.id))
    move(row, RequestStatus.RUNNING)
    row.retries += 1
    row.error_message = ""
    row.updated_at = utcnow()
    update_row(tx, row, "reserved_usd", "status", "retries", "error_message", "updated_at")
    return row


def abandon_retry(tx: Tx, request_id: str, retries: int) -> None:
    """The orchestrator did not retry the execution: the request is failed as before and
    nothing stays reserved."""
    row = _request(tx, request_id, lock=True)
    if row is not None and row.status == RequestStatus.RUNNING and row.retries == retries:
        move(row, RequestStatus.FAILED)
        row.retries -= 1
        ledger.release(row)
        update_row(tx, row, "status", "retries", "reserved_usd")


def attach_execution(tx: Tx, request_id: str, execution_id: str) -> models.ClientRequest:
    """Remembers the execution the orchestrator started (its outcome may have arrived first)."""
    row = _request(tx, request_id, lock=True)
    if row is None:
        raise RequestNotFound(request_id)
    if not row.execution_id:
        row.execution_id = execution_id
        update_row(tx, row, "execution_id")
    return row


def abandon_execution(tx: Tx, request_id: str) -> None:
    """The orchestrator did not start the execution: nothing runs, so nothing stays reserved."""
    row = _request(tx, request_id, lock=True)
    if row is not None and row.status == RequestStatus.RUNNING and not row.execution_id:
        move(row, RequestStatus.PENDING)
        ledger.release(row)
        update_row(tx, row, "status", "reserved_usd")


def record_outcome(
    tx: Tx,
    request_id: str,
    execution_id: str,
    *,
    status: RequestStatus,
    usage: Usage,
    job_id: str,
    error_message: str,
    retries: int = 0,
) -> models.ClientRequest:
    """Settles the budget: charges the actual cost and releases the reservation. Idempotent: a
    settled request stays as it is. A request cancelled while running keeps its status, but the
    work its execution did is still charged.

    `retries` names the run that ended: the execution's usage counts every run so far, so the
    latest run's report charges them all. A report of a run older than the request's latest
    retry is ignored; a newer run (an admin retried the execution on the orchestrator) is
    charged, and a failed request follows it."""
    problems = Violations()
    problems.check(bool(request_id), "request_id", "is required")
    problems.check(bool(execution_id), "execution_id", "is required")
    problems.raise_if_any()
    found = _request(tx, request_id)
    if found is None:
        raise RequestNotFound(request_id)
    # The client's row first, as every budget decision locks it (and in that order): a
    # client's charges settle one at a time, so each sees the month's spend before it and
    # its budget alerts are exact. (SQLite has one writer, this one: nothing to lock, and the
    # request as read is as it is.)
    row: models.ClientRequest | None = found
    if tx.postgres:
        tx.execute(f"SELECT id FROM clients WHERE id = :id{tx.lock()}", {"id": found.client_id})
        row = _request(tx, request_id, lock=True)
    assert row is not None  # requests are never deleted
    if row.execution_id and row.execution_id != execution_id:
        raise ExecutionMismatch(row.id, execution_id, row.execution_id)
    newer = retries > row.retries
    settled = row.charged_at is not None and row.settled_retries == row.retries
    if row.status == RequestStatus.PENDING or retries < row.retries:
        return row
    if settled and not newer:
        # The same run again: only its usage may have grown (attempts stopped by a cancel or
        # a timeout report what they spent after the run ended).
        if ledger.recharge(row, usage):
            row.updated_at = utcnow()
            update_row(tx, row, "cost_usd", "usage", "updated_at")
            ledger.budget_alerts(tx, row.client_id)
        return row
    follows = row.status == RequestStatus.RUNNING or (newer and row.status == RequestStatus.FAILED)
    row.execution_id = execution_id
    row.retries = row.settled_retries = retries
    ledger.charge(row, usage)
    if follows:
        move(row, status)
        row.job_id = job_id if status == RequestStatus.COMPLETED else ""
        row.error_message = error_message[:2000]
    row.updated_at = utcnow()
    update_row(
        tx,
        row,
        "execution_id",
        "cost_usd",
        "usage",
        "charged_at",
        "reserved_usd",
        "status",
        "job_id",
        "error_message",
        "retries",
        "settled_retries",
        "updated_at",
    )
    if follows:
        webhooks.request_event(tx, row)
    ledger.budget_alerts(tx, row.client_id)
    return row


def cancellable(session: Session, principal: Principal, request_id: str) -> models.ClientRequest:
    """The request, if the caller may see it and it has not finished."""
    row = get(session, principal, request_id)
    if RequestStatus(row.status).terminal:
        raise RequestFinished(row.id, row.status, f"request {row.id} is already {row.status}")
    return row


def mark_cancelled(session: Session, principal: Principal, request_id: str) -> models.ClientRequest:
    """Marks the request cancelled after its execution was cancelled (whose outcome, reported
    meanwhile, may have finished the request already: then it stays as reported)."""
    row = get(session, principal, request_id)
    if RequestStatus(row.status).terminal:
        return row
    move(row, RequestStatus.CANCELLED)
    ledger.release(row)
    row.updated_at = utcnow()
    webhooks.request_event(Tx.of(session), row)
    return row


# --- with the orchestrator ------------------------------------------------------------------


class Orchestrator(Protocol):
    """What a request asks of the orchestrator (`kam_server.orchestrator_client`)."""

    async def execute(self, row: models.ClientRequest, tier: str) -> str: ...

    async def retry(self, execution_id: str, retry_number: int) -> None: ...

    async def cancel(self, execution_id: str) -> None: ...


async def execute(
    db: Database, orchestrator: Orchestrator, principal: Principal, request_id: str
) -> models.ClientRequest:
    """Executes the request (`begin_execution`) and has the orchestrator start its execution,
    unless it has one already. When the orchestrator does not start it, the reservation is
    released and the orchestrator's error raised."""
    row, client = await db.run_tx(lambda tx: begin_execution(tx, principal, request_id))
    if row.execution_id:
        return row
    try:
        execution_id = await orchestrator.execute(row, client.tier)
    except MeshError:
        await db.run_tx(lambda tx: abandon_execution(tx, row.id))
        raise
    return await db.run_tx(lambda tx: attach_execution(tx, row.id, execution_id))


async def retry(
    db: Database, orchestrator: Orchestrator, principal: Principal, request_id: str
) -> models.ClientRequest:
    """Runs a failed request again (`begin_retry`) on the orchestrator. When the orchestrator
    does not retry it, the request is failed as before and nothing stays reserved (had it
    retried after all, its outcome names the newer run and is still charged)."""
    row = await db.run_tx(lambda tx: begin_retry(tx, principal, request_id))
    try:
        await orchestrator.retry(row.execution_id, row.retries)
    except MeshError:
        await db.run_tx(lambda tx: abandon_retry(tx, row.id, row.retries))
        raise
    return row


async def cancel(
    db: Database, orchestrator: Orchestrator, principal: Principal, request_id: str
) -> models.ClientRequest:
    """Cancels the request and its execution. The execution is cancelled first, so that when
    the orchestrator cannot be reached nothing has changed and the caller can simply try
    again."""
    row = await db.run(lambda s: cancellable(s, principal, request_id))
    if row.execution_id:
        await orchestrator.cancel(row.execution_id)
    return await db.run(lambda s: mark_cancelled(s, principal, request_id))
