"""The worker registry: workers register themselves, send heartbeats, drain and leave."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import next_page_token, page_window, utcnow
from bitware_core.errors import PermissionDenied, Violations
from bitware_core.sql import Tx, select_rows
from orchestrator_server import models
from orchestrator_server.errors import WorkerNotFound

CAPABILITY = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def register(
    session: Session,
    principal: Principal,
    *,
    worker_id: str,
    name: str,
    address: str,
    capabilities: list[str],
    max_concurrency: int,
    version: str,
) -> models.Worker:
    problems = Violations()
    problems.check(bool(address) and ":" in address, "address", "must be host:port")
    problems.check(bool(capabilities), "capabilities", "at least one is required")
    for index, capability in enumerate(capabilities):
        problems.check(
            bool(CAPABILITY.match(capability)), f"capabilities[{index}]", "must be lower_snake_case"
        )
    problems.check(1 <= max_concurrency <= 1000, "max_concurrency", "must be from 1 to 1000")
    problems.raise_if_any()
    if worker_id and worker_id != principal.worker_id:
        raise PermissionDenied("a worker registers under its own credential's id")
    row = session.get(models.Worker, principal.worker_id)
    if row is None:
        row = models.Worker(id=principal.worker_id)
        session.add(row)
    row.name, row.address, row.capabilities = name or principal.worker_id, address, capabilities
    row.max_concurrency, row.version, row.state = max_concurrency, version, "healthy"
    row.last_heartbeat_at = utcnow()
    row.registered_at = utcnow()
    return row


def heartbeat(session: Session, principal: Principal, worker_id: str, active: int) -> models.Worker:
    """Records a heartbeat. A drained or removed worker is told its state (and stays out);
    a worker the registry does not know at all gets NOT_FOUND and should register again."""
    row = session.get(models.Worker, worker_id or principal.worker_id)
    if row is None:
        raise WorkerNotFound(worker_id, f"worker {worker_id!r} is not registered; register again")
    if row.id != principal.worker_id:
        raise PermissionDenied("a worker sends heartbeats for itself only")
    if row.state == "deregistered":
        return row
    row.last_heartbeat_at = utcnow()
    row.active_stages = active
    if row.state == "unhealthy":
        row.state = "healthy"
    return row


def mark_silent_unhealthy(tx: Tx, timeout_s: float) -> list[str]:
    """Healthy workers silent past the timeout become unhealthy; draining workers that are idle
    or silent are gone."""
    silent = (
        "state IN ('healthy', 'draining')"
        " AND (last_heartbeat_at < :cutoff OR (state = 'draining' AND active_stages = 0))"
    )
    params = {"cutoff": tx.ts(utcnow() - timedelta(seconds=timeout_s))}
    ids = [row[0] for row in tx.all(f"SELECT id FROM workers WHERE {silent}", params)]
    if ids:
        tx.execute(
            "UPDATE workers SET state = CASE WHEN state = 'healthy' THEN 'unhealthy'"
            f" ELSE 'deregistered' END WHERE {silent}",
            params,
        )
    return ids


def mark_unhealthy(session: Session, worker_id: str) -> None:
    row = session.get(models.Worker, worker_id)
    if row is not None and row.state == "healthy":
        row.state = "unhealthy"


def count_by_state(tx: Tx) -> dict[str, int]:
    return dict(tx.all("SELECT state, count(*) FROM workers GROUP BY state"))


def available(tx: Tx) -> list[models.Worker]:
    return select_rows(tx, models.Worker, "state = 'healthy' ORDER BY id")


def list_workers(
    session: Session, page_size: int, page_token: str, capability: str
) -> tuple[list[models.Worker], str]:
    offset, limit = page_window(page_size, page_token)
    rows = [
        w
        for w in session.scalars(select(models.Worker).order_by(models.Worker.id))
        if not capability or capability in w.capabilities
    ]
    window = rows[offset : offset + limit + 1]
    return window[:limit], next_page_token(offset, limit, len(window))


def deregister(
    session: Session, principal: Principal, worker_id: str, drain: bool
) -> models.Worker:
    row = session.get(models.Worker, worker_id)
    if row is None:
        raise WorkerNotFound(worker_id)
    if principal.tag != "admin" and principal.worker_id != worker_id:
        raise PermissionDenied("a worker deregisters itself only")
    row.state = "draining" if drain else "deregistered"
    return row
