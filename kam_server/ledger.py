"""The budget ledger of each client, kept on its requests.

Executing a request reserves the template's cost estimate (`reserved_usd`); when the
orchestrator reports the outcome, the actual cost is charged (`cost_usd`, `charged_at`) and the
reservation released. A month's spend is what was charged in that UTC calendar month; what is
reserved counts against the budget until it is settled, whenever it was made. Budget checks and
reservations run in the same transaction (and SQLite has a single writer), so two executions
cannot both take the last dollars.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from bitware_core import money
from bitware_core.auth import Principal
from bitware_core.db import utcnow
from bitware_core.domain import Usage
from bitware_core.sql import Tx
from kam_server import models, webhooks
from kam_server.accounts import named_or_own_client
from kam_server.errors import BudgetExceeded


def month_start(now: datetime | None = None) -> datetime:
    now = now or utcnow()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def committed(tx: Tx, client_id: str) -> float:
    """The client's budget committed this month (spent plus reserved), in one statement. Each
    part reads an index of its own (`ix_requests_client_charged`, `ix_requests_client_reserved`):
    only charged-this-month and reserving rows are visited, never all of a client's requests. A
    reservation is never negative (estimates are not), so summing the positive ones sums them
    all."""
    spent, held = tx.one(
        "SELECT (SELECT coalesce(sum(cost_usd), 0.0) FROM requests"
        "  WHERE client_id = :id AND charged_at >= :start),"
        " (SELECT coalesce(sum(reserved_usd), 0.0) FROM requests"
        "  WHERE client_id = :id AND reserved_usd > 0)",
        {"id": client_id, "start": tx.ts(month_start())},
    )
    return float(spent or 0.0) + float(held or 0.0)


def reserve(
    client: models.Client, row: models.ClientRequest, amount: float, committed: float
) -> None:
    """Holds `amount` for `row`, or raises BudgetExceeded and holds nothing. `committed`: the
    client's spend plus reservations, read with the client row locked."""
    left = client.monthly_budget_usd - committed
    if amount > left + 1e-9:
        raise BudgetExceeded(client.id, needed_usd=amount, remaining_usd=max(0.0, left))
    row.reserved_usd = amount


def release(row: models.ClientRequest) -> None:
    row.reserved_usd = 0.0


def charge(row: models.ClientRequest, usage: Usage) -> None:
    """Charges the actual cost and releases the reservation. `usage` is that of every run of
    the request's execution so far (a retry adds to it), so it replaces what an earlier run
    charged; `requests.record_outcome` decides whether a report is charged. The cost is whole
    micro-dollars (`usage.cost_micros`)."""
    micros = max(0, usage.cost_micros)
    row.cost_usd = money.to_usd(micros)
    row.usage = usage.priced(micros).to_json()
    row.charged_at = utcnow()
    row.reserved_usd = 0.0


def recharge(row: models.ClientRequest, usage: Usage) -> bool:
    """A settled run reported again with more usage (attempts stopped by a cancel or a timeout
    report what they spent after the run ended): the charge rises to the new total, in the
    month it was first charged. Returns whether anything changed; a total never goes down."""
    micros = usage.cost_micros
    if (
        micros <= money.to_micros(row.cost_usd)
        and usage.tokens <= Usage.from_json(row.usage).tokens
    ):
        return False
    row.cost_usd = money.to_usd(micros)
    row.usage = usage.to_json()
    return True


#: Shares of the monthly budget whose crossing is written to the audit log, once a month each.
ALERT_PERCENTS = (80, 100)


def spent_this_month_micros(tx: Tx, client_id: str) -> int:
    """What the client was charged this month, in micro-dollars: each request's charge is a
    whole number of micro-dollars (see `bitware_core.money`), so they add up exactly."""
    rows = tx.all(
        "SELECT cost_usd FROM requests WHERE client_id = :id AND charged_at >= :start",
        {"id": client_id, "start": tx.ts(month_start())},
    )
    return sum(money.to_micros(cost) for (cost,) in rows)


def budget_alerts(tx: Tx, client_id: str) -> list[int]:
    """Writes a `budget.threshold` audit event for each of `ALERT_PERCENTS` of the client's
    monthly budget that its spend this month has reached; returns the percentages alerted now.
    The caller holds the client's row locked, so the spend read here counts every charge
    settled before. Each alert is also queued for the client's webhooks (`budget.threshold`).
    An alert's id is derived from client, month and percentage and written
    with ON CONFLICT DO NOTHING: once a month, however often the threshold is seen."""
    [budget] = tx.one("SELECT monthly_budget_usd FROM clients WHERE id = :id", {"id": client_id})
    budget_micros = money.to_micros(budget)
    if budget_micros <= 0:
        return []
    spent = spent_this_month_micros(tx, client_id)
    month = month_start().strftime("%Y-%m")
    alerted = []
    for percent in ALERT_PERCENTS:
        if spent * 100 < budget_micros * percent:
            continue
        key = hashlib.sha256(f"{client_id}|{month}|{percent}".encode()).hexdigest()[:32]
        details = {
            "percent": str(percent),
            "spent_usd": f"{money.to_usd(spent):.6f}",
            "monthly_budget_usd": f"{budget:.2f}",
            "month": month,
        }
        written = tx.execute(
            "INSERT INTO audit_events (id, at, actor, action, target, details)"
            " VALUES (:id, :at, 'kam', 'budget.threshold', :target, :details)"
            " ON CONFLICT (id) DO NOTHING",
            {
                "id": f"aud_b{key}",
                "at": tx.ts(utcnow()),
                "target": f"clients/{client_id}",
                "details": tx.json(details),
            },
        )
        if written.rowcount == 1:
            alerted.append(percent)
            webhooks.enqueue(tx, client_id, "budget.threshold", details)
    return alerted


@dataclass
class Line:
    """Spend on one template or request."""

    key: str
    spent_micros: int = 0
    reserved_usd: float = 0.0
    executions: int = 0
    usage: Usage = field(default_factory=Usage)

    @property
    def spent_usd(self) -> float:
        return money.to_usd(self.spent_micros)

    def add(self, row: models.ClientRequest, counted: bool) -> None:
        self.reserved_usd += row.reserved_usd
        self.executions += 1
        if not counted:
            return
        charged = money.to_micros(row.cost_usd)
        self.spent_micros += charged
        self.usage += Usage.from_json(row.usage).priced(charged)


@dataclass
class MonthUsage:
    client_id: str
    monthly_budget_usd: float
    spent_usd: float
    reserved_usd: float
    requests_this_month: int
    by_template: list[Line]
    by_request: list[Line]
    #: The `budget.threshold` audit events of this month, oldest first.
    alerts: list[models.AuditEvent] = field(default_factory=list)

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
    alerts = list(
        session.scalars(
            select(models.AuditEvent)
            .where(
                models.AuditEvent.action == "budget.threshold",
                models.AuditEvent.target == f"clients/{client.id}",
                models.AuditEvent.at >= start,
            )
            .order_by(models.AuditEvent.at, models.AuditEvent.id)
        )
    )
    return MonthUsage(
        client_id=client.id,
        monthly_budget_usd=client.monthly_budget_usd,
        spent_usd=money.to_usd(sum(line.spent_micros for line in requests)),
        reserved_usd=sum(line.reserved_usd for line in requests),
        requests_this_month=int(created or 0),
        by_template=sorted(templates.values(), key=lambda line: line.key),
        by_request=requests,
        alerts=alerts,
    )


def usage_of(session: Session, principal: Principal, client_id: str) -> MonthUsage:
    """`month_usage` of `client_id`, else of the caller's own client (INVALID_ARGUMENT for a
    caller without one); NOT_FOUND for a client the caller may not see."""
    return month_usage(session, named_or_own_client(session, principal, client_id))
