"""The budget ledger of each client, kept on its requests.

Executing a request reserves the template's cost estimate (`reserved_usd`); when the
orchestrator reports the outcome, the actual cost is charged (`cost_usd`, `charged_at`) and the
reservation released. A month's spend is what was charged in that UTC calendar month; what is
reserved counts against the budget until it is settled, whenever it was made. Budget checks and
reservations run in the same transaction (and SQLite has a single writer), so two executions
cannot both take the last dollars.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from bitware_core.db import utcnow
from bitware_core.sql import Tx
from kam_server import models
from kam_server.errors import BudgetExceeded

_USAGE_SUMS = ("prompt_tokens", "completion_tokens", "worker_time_ms", "llm_calls")


def month_start(now: datetime | None = None) -> datetime:
    now = now or utcnow()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def running_and_committed(tx: Tx, client_id: str) -> tuple[int, float]:
    """How many of the client's requests run now, and its budget committed this month (spent
    plus reserved), in one statement. Each part reads an index of its own
    (`ix_requests_client_status`, `ix_requests_client_charged`, `ix_requests_client_reserved`):
    only running, charged-this-month and reserving rows are visited, never all of a client's
    requests. A reservation is never negative (estimates are not), so summing the positive
    ones sums them all."""
    running, spent, held = tx.one(
        "SELECT (SELECT count(*) FROM requests WHERE client_id = :id AND status = 'running'),"
        " (SELECT coalesce(sum(cost_usd), 0.0) FROM requests"
        "  WHERE client_id = :id AND charged_at >= :start),"
        " (SELECT coalesce(sum(reserved_usd), 0.0) FROM requests"
        "  WHERE client_id = :id AND reserved_usd > 0)",
        {"id": client_id, "start": tx.ts(month_start())},
    )
    return int(running or 0), float(spent or 0.0) + float(held or 0.0)


def reserve(
    client: models.Client, row: models.ClientRequest, amount: float, committed: float
) -> None:
    """Holds `amount` for `row`, or raises BudgetExceeded and holds nothing. `committed`: the
    client's spend plus reservations, read with the client row locked."""
    left = client.monthly_budget_usd - committed
    if amount > left + 1e-9:
        raise BudgetExceeded(
            f"executing needs ${amount:.2f} but only ${max(0.0, left):.2f} of the monthly "
            "budget is left",
            metadata={
                "client_id": client.id,
                "needed_usd": f"{amount:.4f}",
                "remaining_usd": f"{max(0.0, left):.4f}",
            },
        )
    row.reserved_usd = amount


def release(row: models.ClientRequest) -> None:
    row.reserved_usd = 0.0


def charge(row: models.ClientRequest, cost_usd: float, usage: dict[str, Any]) -> None:
    """Charges the actual cost and releases the reservation. `cost_usd` and `usage` are those
    of every run of the request's execution so far (a retry adds to them), so they replace what
    an earlier run charged; `requests.record_outcome` decides whether a report is charged."""
    row.cost_usd = max(0.0, cost_usd)
    row.usage = usage
    row.charged_at = utcnow()
    row.reserved_usd = 0.0


@dataclass
class Line:
    """Spend on one template or request."""

    key: str
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    executions: int = 0
    usage: dict[str, Any] = field(default_factory=dict)

    def add(self, row: models.ClientRequest, counted: bool) -> None:
        self.reserved_usd += row.reserved_usd
        self.executions += 1
        if not counted:
            return
        self.spent_usd += row.cost_usd
        for name in _USAGE_SUMS:
            self.usage[name] = int(self.usage.get(name, 0)) + int(row.usage.get(name, 0) or 0)
        self.usage["cost_usd"] = float(self.usage.get("cost_usd", 0.0)) + row.cost_usd
        for name in ("model", "provider"):
            if row.usage.get(name):
                self.usage[name] = row.usage[name]


@dataclass
class MonthUsage:
    client_id: str
    monthly_budget_usd: float
    spent_usd: float
    reserved_usd: float
    requests_this_month: int
    by_template: list[Line]
    by_request: list[Line]

    @property
    def remaining_usd(self) -> float:
        return self.monthly_budget_usd - self.spent_usd - self.reserved_usd


def month_usage(session: Session, client: models.Client) -> MonthUsage:
    """Month-to-date spend, what is reserved now, and both per template and per request (over
    the requests charged this month or holding a reservation)."""
    start = month_start()
    rows = list(
        session.scalars(
            select(models.ClientRequest)
            .where(
                models.ClientRequest.client_id == client.id,
                or_(
                    models.ClientRequest.charged_at >= start,
                    models.ClientRequest.reserved_usd > 0,
                ),
            )
            .order_by(models.ClientRequest.created_at, models.ClientRequest.id)
        )
    )
    templates: dict[str, Line] = defaultdict(lambda: Line(""))
    requests: list[Line] = []
    for row in rows:
        counted = row.charged_at is not None and row.charged_at >= start
        line = templates[row.master_template]
        line.key = row.master_template
        line.add(row, counted)
        request_line = Line(row.id)
        request_line.add(row, counted)
        requests.append(request_line)
    created = session.scalar(
        select(func.count()).where(
            models.ClientRequest.client_id == client.id,
            models.ClientRequest.created_at >= start,
        )
    )
    return MonthUsage(
        client_id=client.id,
        monthly_budget_usd=client.monthly_budget_usd,
        spent_usd=sum(line.spent_usd for line in requests),
        reserved_usd=sum(line.reserved_usd for line in requests),
        requests_this_month=int(created or 0),
        by_template=sorted(templates.values(), key=lambda line: line.key),
        by_request=requests,
    )
