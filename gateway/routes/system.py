"""The mesh at work: workers, the queue, usage against budget; and the gateway's own /healthz
and /metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.exposition import choose_encoder

from bitware.kam.v1 import accounts_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, registry_pb2
from gateway.calls import CallDep, reply, upstream_of
from gateway.models import Int32
from gateway.schemas import returns

router = APIRouter(prefix="/api", tags=["mesh"])
ops = APIRouter(tags=["operations"])


@router.get("/workers", responses=returns(registry_pb2.ListWorkersResponse, "Workers by id"))
async def list_workers(
    call: CallDep,
    page_size: Annotated[Int32, Query(description="At most this many (default 50).")] = 0,
    page_token: Annotated[str, Query(description="The previous page's next_page_token.")] = "",
    capability: Annotated[str, Query(description="Only workers with this capability.")] = "",
) -> JSONResponse:
    """Lists registered workers with their live load."""
    message = registry_pb2.ListWorkersRequest(
        page_size=page_size, page_token=page_token, capability=capability
    )
    return reply(await call(call.up.registry.ListWorkers, message))


@router.get("/queue", responses=returns(orchestrator_pb2.GetQueueResponse, "Queue depth"))
async def get_queue(call: CallDep) -> JSONResponse:
    """Reports the queue: depth and oldest wait per priority, running and retrying stages."""
    return reply(await call(call.up.orchestrator.GetQueue, orchestrator_pb2.GetQueueRequest()))


@router.get("/usage", responses=returns(accounts_pb2.GetUsageResponse, "Month-to-date usage"))
async def get_usage(
    call: CallDep,
    client_id: Annotated[str, Query(description="Empty means the caller's own client.")] = "",
) -> JSONResponse:
    """Month-to-date spend against the budget, per template and per request."""
    message = accounts_pb2.GetUsageRequest(client_id=client_id)
    return reply(await call(call.up.clients.GetUsage, message))


@ops.get(
    "/healthz",
    responses={
        200: {"description": "Every upstream answers SERVING"},
        503: {"description": "At least one upstream does not; `upstreams` says which"},
    },
)
async def healthz(request: Request) -> JSONResponse:
    """Asks grpc.health.v1 of every upstream server."""
    upstreams = await upstream_of(request).health()
    failing = sorted(name for name, state in upstreams.items() if state != "ok")
    if failing:
        body = {"status": "unavailable", "failing": failing, "upstreams": upstreams}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "upstreams": upstreams})


@ops.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text format (OpenMetrics when the scraper asks for it)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(request.app.state.metrics.registry), media_type=content_type)
