"""Client requests: create, list, read, execute, retry, cancel (KAM's RequestService)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2
from gateway.calls import CallDep, enum_value, reply
from gateway.models import CreateRequestBody, Int32, RequestStatus, StructureType
from gateway.schemas import returns

router = APIRouter(prefix="/api/requests", tags=["requests"])


@router.post("", responses=returns(requests_pb2.CreateRequestResponse, "The request"))
async def create_request(body: CreateRequestBody, call: CallDep) -> JSONResponse:
    """Creates a request; the same `idempotency_key` returns the same request."""
    spec = common_pb2.ContentSpec(
        topic=body.topic,
        structure_type=enum_value(common_pb2.StructureType, "STRUCTURE_TYPE_", body.structure_type),
        audience=body.audience,
        granularity=body.granularity,
        constraints=body.constraints,
        options=body.options,
    )
    message = requests_pb2.CreateRequestRequest(
        spec=spec,
        master_template=body.master_template,
        urgency=enum_value(requests_pb2.Urgency, "URGENCY_", body.urgency),
        idempotency_key=body.idempotency_key,
        client_id=body.client_id,
    )
    return reply(await call(call.up.requests.CreateRequest, message))


@router.get("", responses=returns(requests_pb2.ListRequestsResponse, "A page of requests"))
async def list_requests(
    call: CallDep,
    page_size: Annotated[Int32, Query(description="At most this many (default 50).")] = 0,
    page_token: Annotated[str, Query(description="The previous page's next_page_token.")] = "",
    status: RequestStatus | None = None,
    structure_type: StructureType | None = None,
    client_id: Annotated[str, Query(description="Only this client's (admins, support).")] = "",
) -> JSONResponse:
    """Lists requests, newest first."""
    message = requests_pb2.ListRequestsRequest(
        page_size=page_size,
        page_token=page_token,
        status=enum_value(requests_pb2.RequestStatus, "REQUEST_STATUS_", status),
        structure_type=enum_value(common_pb2.StructureType, "STRUCTURE_TYPE_", structure_type),
        client_id=client_id,
    )
    return reply(await call(call.up.requests.ListRequests, message))


@router.get("/{request_id}", responses=returns(requests_pb2.GetRequestResponse, "The request"))
async def get_request(request_id: str, call: CallDep) -> JSONResponse:
    """Returns one request."""
    message = requests_pb2.GetRequestRequest(request_id=request_id)
    return reply(await call(call.up.requests.GetRequest, message))


@router.post(
    "/{request_id}/execute",
    responses=returns(requests_pb2.ExecuteRequestResponse, "The request, running"),
)
async def execute_request(request_id: str, call: CallDep) -> JSONResponse:
    """Executes a request; executing twice returns the same execution."""
    message = requests_pb2.ExecuteRequestRequest(request_id=request_id)
    return reply(await call(call.up.requests.ExecuteRequest, message))


@router.post(
    "/{request_id}/retry",
    responses=returns(requests_pb2.RetryRequestResponse, "The request, running again"),
)
async def retry_request(request_id: str, call: CallDep) -> JSONResponse:
    """Retries a failed request from its failed stage; checks tier and budget again and
    charges the retry."""
    message = requests_pb2.RetryRequestRequest(request_id=request_id)
    return reply(await call(call.up.requests.RetryRequest, message))


@router.post(
    "/{request_id}/cancel",
    responses=returns(requests_pb2.CancelRequestResponse, "The request, cancelled"),
)
async def cancel_request(request_id: str, call: CallDep) -> JSONResponse:
    """Cancels a request and its execution, if any."""
    message = requests_pb2.CancelRequestRequest(request_id=request_id)
    return reply(await call(call.up.requests.CancelRequest, message))
