"""A client's webhook endpoints and their delivery log (KAM's WebhookService); docs/WEBHOOKS.md
says what is posted and how to check its signature."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from bitware.kam.v1 import webhooks_pb2
from gateway.calls import CallDep, reply
from gateway.models import CreateWebhookBody, Int32
from gateway.schemas import returns

router = APIRouter(prefix="/api", tags=["webhooks"])

PageSize = Annotated[Int32, Query(description="At most this many (default 50).")]
PageToken = Annotated[str, Query(description="The previous page's next_page_token.")]
ClientId = Annotated[str, Query(description="The client; empty means the caller's own.")]


@router.post(
    "/webhooks",
    responses=returns(
        webhooks_pb2.CreateWebhookEndpointResponse, "The endpoint; its secret is shown only now"
    ),
)
async def create_webhook(body: CreateWebhookBody, call: CallDep) -> JSONResponse:
    """Registers an endpoint for the client's events and returns its signing secret, once."""
    message = webhooks_pb2.CreateWebhookEndpointRequest(
        client_id=body.client_id,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
    )
    return reply(await call(call.up.webhooks.CreateWebhookEndpoint, message))


@router.get(
    "/webhooks", responses=returns(webhooks_pb2.ListWebhookEndpointsResponse, "The endpoints")
)
async def list_webhooks(
    call: CallDep, client_id: ClientId = "", page_size: PageSize = 0, page_token: PageToken = ""
) -> JSONResponse:
    """Lists a client's endpoints, oldest first (never their secrets)."""
    message = webhooks_pb2.ListWebhookEndpointsRequest(
        client_id=client_id, page_size=page_size, page_token=page_token
    )
    return reply(await call(call.up.webhooks.ListWebhookEndpoints, message))


@router.delete(
    "/webhooks/{endpoint_id}",
    responses=returns(webhooks_pb2.DeleteWebhookEndpointResponse, "Deleted"),
)
async def delete_webhook(endpoint_id: str, call: CallDep) -> JSONResponse:
    """Deletes an endpoint; its undelivered events are given up."""
    message = webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id)
    return reply(await call(call.up.webhooks.DeleteWebhookEndpoint, message))


@router.get(
    "/webhook-deliveries",
    responses=returns(webhooks_pb2.ListWebhookDeliveriesResponse, "Deliveries, newest first"),
)
async def list_webhook_deliveries(
    call: CallDep,
    endpoint_id: Annotated[str, Query(description="One endpoint's; empty means all.")] = "",
    client_id: ClientId = "",
    page_size: PageSize = 0,
    page_token: PageToken = "",
) -> JSONResponse:
    """The delivery log: each event's attempts, last HTTP status and error, next attempt."""
    message = webhooks_pb2.ListWebhookDeliveriesRequest(
        endpoint_id=endpoint_id, client_id=client_id, page_size=page_size, page_token=page_token
    )
    return reply(await call(call.up.webhooks.ListWebhookDeliveries, message))
