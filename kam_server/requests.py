"""Client requests: creation with tier checks, execution with a budget reservation, and the
outcome reported back by the orchestrator (which settles the budget)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.errors import FailedPrecondition, Violations
from kam_server import catalog, models
from kam_server.errors import (
    BudgetExceeded,
    ClientSuspended,
    RequestNotFound,
    TemplateDeprecated,
    TierLimitExceeded,
    TierNotAllowed,
)
from kam_server.identity import PRIORITIES, TIER_LIMITS, get_client

URGENCY_PRIORITY = {"low": "low", "normal": "normal", "high": "high", "critical": "critical"}
TERMINAL = ("completed", "failed", "cancelled")


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


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def create(session: Session, principal: Principal, new: NewRequest) -> models.ClientRequest:
    problems = Violations()
    problems.check(bool(new.topic.strip()), "spec.topic", "is required")
    problems.check(len(new.topic) <= 500, "spec.topic", "must be at most 500 characters")
    problems.check(
        bool(new.structure_type or new.master_template),
        "spec.structure_type",
        "is required unless master_template is given",
    )
    problems.check(
        new.structure_type in ("", *catalog.STRUCTURE_TYPES),
        "spec.structure_type",
        "is not a known structure type",
    )
    problems.check(1 <= new.granularity <= 5, "spec.granularity", "must be from 1 to 5")
    client_id = new.client_id if principal.sees_all_clients else principal.client_id
    problems.check(bool(client_id), "client_id", "is required for callers without a client")
    problems.raise_if_any()
    client = get_client(session, principal, client_id)
    if new.idempotency_key:
        existing = session.scalar(
            select(models.ClientRequest).where(
                models.ClientRequest.client_id == client.id,
                models.ClientRequest.idempotency_key == new.idempotency_key,
            )
        )
        if existing is not None:
            return existing
    if client.status != "active":
        raise ClientSuspended(f"client {client.id} is suspended")
    template = catalog.get(session, new.master_template or f"{new.structure_type}_standard")
    if template.deprecated:
        raise TemplateDeprecated(f"master template {template.name!r} is deprecated")
    limits = TIER_LIMITS[client.tier]
    if template.allowed_tiers and client.tier not in template.allowed_tiers:
        raise TierNotAllowed(
            f"tier {client.tier} may not use template {template.name!r}", reason="TIER_TEMPLATE"
        )
    priority = URGENCY_PRIORITY[new.urgency]
    if PRIORITIES.index(priority) > PRIORITIES.index(limits.max_priority):
        raise TierNotAllowed(
            f"tier {client.tier} allows priority up to {limits.max_priority}",
            reason="TIER_PRIORITY",
        )
    this_month = session.scalar(
        select(func.count()).where(
            models.ClientRequest.client_id == client.id,
            models.ClientRequest.created_at >= _month_start(utcnow()),
        )
    )
    if (this_month or 0) >= limits.max_requests_per_month:
        raise TierLimitExceeded(
            f"tier {client.tier} allows {limits.max_requests_per_month} requests a month",
            reason="TIER_LIMIT_REQUESTS",
        )
    spec: dict[str, Any] = {
        "topic": new.topic.strip(),
        "structure_type": template.structure_type,
        "audience": new.audience,
        "granularity": new.granularity,
        "constraints": new.constraints,
        "options": new.options,
    }
    row = models.ClientRequest(
        id=new_id("req"),
        client_id=client.id,
        spec=spec,
        structure_type=template.structure_type,
        master_template=template.name,
        template_version=template.version,
        urgency=new.urgency,
        idempotency_key=new.idempotency_key or None,
    )
    session.add(row)
    return row


def get(session: Session, principal: Principal, request_id: str) -> models.ClientRequest:
    row = session.get(models.ClientRequest, request_id) if request_id else None
    if row is None or not principal.visible_client(row.client_id):
        raise RequestNotFound(f"request {request_id!r} not found")
    return row


def list_requests(
    session: Session,
    principal: Principal,
    *,
    page_size: int,
    page_token: str,
    status: str,
    client_id: str,
    structure_type: str,
) -> tuple[list[models.ClientRequest], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.ClientRequest)
    if not principal.sees_all_clients:
        query = query.where(models.ClientRequest.client_id == principal.client_id)
    elif client_id:
        query = query.where(models.ClientRequest.client_id == client_id)
    if status:
        query = query.where(models.ClientRequest.status == status)
    if structure_type:
        query = query.where(models.ClientRequest.structure_type == structure_type)
    query = query.order_by(models.ClientRequest.created_at.desc(), models.ClientRequest.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def begin_execution(
    session: Session, principal: Principal, request_id: str
) -> models.ClientRequest:
    """Checks tier and budget and reserves the template's cost estimate; a request already
    running is returned as it is (so executing twice starts nothing new)."""
    row = get(session, principal, request_id)
    if row.status == "running":
        return row
    if row.status != "pending":
        raise FailedPrecondition(f"request {row.id} is {row.status}", reason="REQUEST_FINISHED")
    client = get_client(session, principal, row.client_id)
    if client.status != "active":
        raise ClientSuspended(f"client {client.id} is suspended")
    template = catalog.get(session, row.master_template, row.template_version)
    if template.deprecated:
        raise TemplateDeprecated(f"master template {template.name!r} is deprecated")
    running = session.scalar(
        select(func.count()).where(
            models.ClientRequest.client_id == client.id, models.ClientRequest.status == "running"
        )
    )
    limits = TIER_LIMITS[client.tier]
    if (running or 0) >= limits.max_concurrent_executions:
        raise TierLimitExceeded(
            f"tier {client.tier} allows {limits.max_concurrent_executions} executions at once",
            reason="TIER_LIMIT_CONCURRENCY",
        )
    committed = month_spend(session, client.id)
    if committed + template.cost_estimate_usd > client.monthly_budget_usd:
        raise BudgetExceeded(
            f"executing needs ${template.cost_estimate_usd:.2f} but only "
            f"${max(0.0, client.monthly_budget_usd - committed):.2f} of the monthly budget is left",
            metadata={"client_id": client.id},
        )
    row.status = "running"
    row.reserved_usd = template.cost_estimate_usd
    row.updated_at = utcnow()
    return row


def month_spend(session: Session, client_id: str) -> float:
    """Charged plus reserved dollars this calendar month."""
    total = session.scalar(
        select(
            func.coalesce(
                func.sum(models.ClientRequest.cost_usd + models.ClientRequest.reserved_usd), 0.0
            )
        ).where(
            models.ClientRequest.client_id == client_id,
            models.ClientRequest.created_at >= _month_start(utcnow()),
        )
    )
    return float(total or 0.0)


def attach_execution(session: Session, request_id: str, execution_id: str) -> models.ClientRequest:
    row = session.get(models.ClientRequest, request_id)
    if row is None:
        raise RequestNotFound(f"request {request_id!r} not found")
    row.execution_id = execution_id
    return row


def abandon_execution(session: Session, request_id: str) -> None:
    """The orchestrator could not be reached: nothing runs, so nothing stays reserved."""
    row = session.get(models.ClientRequest, request_id)
    if row is not None and row.status == "running" and not row.execution_id:
        row.status, row.reserved_usd = "pending", 0.0


def record_outcome(
    session: Session,
    request_id: str,
    *,
    status: str,
    usage: dict[str, Any],
    cost_usd: float,
    job_id: str,
    error_message: str,
) -> models.ClientRequest:
    """Settles the budget: charges the actual cost and releases the reservation. Idempotent."""
    row = session.get(models.ClientRequest, request_id)
    if row is None:
        raise RequestNotFound(f"request {request_id!r} not found")
    if row.status in TERMINAL:
        return row
    row.status = status
    row.usage = usage
    row.cost_usd = cost_usd
    row.reserved_usd = 0.0
    row.job_id = job_id
    row.error_message = error_message
    row.updated_at = utcnow()
    return row


def cancel(session: Session, principal: Principal, request_id: str) -> models.ClientRequest:
    row = get(session, principal, request_id)
    if row.status in TERMINAL:
        raise FailedPrecondition(
            f"request {row.id} is already {row.status}", reason="REQUEST_FINISHED"
        )
    row.status = "cancelled"
    row.reserved_usd = 0.0
    row.updated_at = utcnow()
    return row
