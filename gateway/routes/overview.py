"""GET /api/overview: the time series behind the dashboard's Overview page
(`gateway.overview` says how each is aggregated)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from bitware.kam.v1 import accounts_pb2, auth_pb2, requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2
from bitware_core.db import utcnow
from gateway import overview
from gateway.calls import Call, CallDep

router = APIRouter(prefix="/api", tags=["mesh"])


class MinutePoint(BaseModel):
    time: str = Field(description="The minute's start (RFC 3339, UTC).")
    succeeded: int = Field(description="Executions that succeeded in the minute.")
    failed: int = Field(description="Executions that failed in the minute.")
    cancelled: int = Field(description="Executions cancelled in the minute.")
    p50_seconds: float | None = Field(description="Median created → ended time of those.")
    p95_seconds: float | None = Field(description="95th percentile of the same.")
    in_flight: int = Field(description="Attempts running on workers during the minute.")


class DayPoint(BaseModel):
    date: str = Field(description="The day (UTC), YYYY-MM-DD.")
    spent_usd: float = Field(description="Dollars charged that day.")
    total_usd: float = Field(description="Dollars charged this month up to and including it.")


class Summary(BaseModel):
    succeeded: int = Field(description="Executions that succeeded in the window.")
    failed: int = Field(description="Executions that failed in the window.")
    cancelled: int = Field(description="Executions cancelled in the window.")
    p50_seconds: float | None = Field(description="Median created → ended time over the window.")
    p95_seconds: float | None = Field(description="95th percentile of the same.")
    in_flight_now: int = Field(description="Attempts running on workers at this moment.")


class Overview(BaseModel):
    summary: Summary = Field(description="The whole window at once.")
    minutes: list[MinutePoint] = Field(description="One point per minute of the window.")
    days: list[DayPoint] = Field(description="One point per day of this month so far.")
    monthly_budget_usd: float = Field(
        description="The client's monthly budget; for staff without client_id, all active "
        "clients' together."
    )
    partial: bool = Field(description="True when the lists were longer than the gateway reads.")


async def _executions(
    call: Call, client_id: str, since: datetime
) -> tuple[list[orchestrator_pb2.Execution], bool]:
    found: list[orchestrator_pb2.Execution] = []
    token = ""
    for _ in range(overview.MAX_PAGES):
        page = await call(
            call.up.orchestrator.ListExecutions,
            orchestrator_pb2.ListExecutionsRequest(
                page_size=overview.PAGE_SIZE,
                page_token=token,
                client_id=client_id,
                include_stages=True,
            ),
        )
        found.extend(page.executions)
        token = page.next_page_token
        if not token or page.executions[-1].create_time.ToDatetime() < since:
            return found, False
    return found, True


async def _requests(
    call: Call, client_id: str, since: datetime
) -> tuple[list[requests_pb2.ClientRequest], bool]:
    found: list[requests_pb2.ClientRequest] = []
    token = ""
    for _ in range(overview.MAX_PAGES):
        page = await call(
            call.up.requests.ListRequests,
            requests_pb2.ListRequestsRequest(
                page_size=overview.PAGE_SIZE, page_token=token, client_id=client_id
            ),
        )
        found.extend(page.requests)
        token = page.next_page_token
        if not token or page.requests[-1].create_time.ToDatetime() < since:
            return found, False
    return found, True


async def _budget(call: Call, client_id: str) -> float:
    me = await call(call.up.auth.Authenticate, auth_pb2.AuthenticateRequest())
    client_id = client_id or me.principal.client_id
    if client_id:
        usage = await call(
            call.up.clients.GetUsage, accounts_pb2.GetUsageRequest(client_id=client_id)
        )
        return usage.monthly_budget_usd
    total, token = 0.0, ""
    while True:  # every page: the line is the sum of all active clients' budgets
        page = await call(
            call.up.clients.ListClients,
            accounts_pb2.ListClientsRequest(
                page_size=overview.PAGE_SIZE,
                page_token=token,
                status=accounts_pb2.CLIENT_STATUS_ACTIVE,
            ),
        )
        total += sum(client.monthly_budget_usd for client in page.clients)
        token = page.next_page_token
        if not token:
            return total


@router.get("/overview", response_model=Overview)
async def get_overview(
    call: CallDep,
    client_id: Annotated[
        str, Query(description="Only this client's (staff); clients always see their own.")
    ] = "",
    minutes: Annotated[int, Query(ge=5, le=1440, description="The window, in minutes.")] = 60,
) -> Overview:
    """Executions per minute by outcome, their p50/p95 end-to-end time, model calls in flight,
    and spend per day against the monthly budget."""
    now = utcnow()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    (executions, cut), (requests, cut_requests), budget = await asyncio.gather(
        _executions(call, client_id, start - overview.LOOKBACK),
        _requests(call, client_id, month_start - timedelta(days=7)),
        _budget(call, client_id),
    )
    buckets = overview.minutes(executions, start, minutes, now)
    return Overview(
        summary=Summary(**overview.summary(buckets, overview.running_now(executions))),
        minutes=[MinutePoint(**m.as_json()) for m in buckets],
        days=[DayPoint(**d) for d in overview.days(requests, month_start, now)],
        monthly_budget_usd=budget,
        partial=cut or cut_requests,
    )
