"""WebhookService: a client's webhook endpoints and the log of their deliveries."""

from __future__ import annotations

from bitware.kam.v1 import webhooks_pb2, webhooks_pb2_grpc
from bitware_core import convert
from bitware_core.auth import current_principal
from bitware_core.db import Database
from bitware_core.server import Context
from kam_server import models, webhooks
from kam_server.services import Handlers

_STATUS = {
    "pending": webhooks_pb2.DELIVERY_STATUS_PENDING,
    "succeeded": webhooks_pb2.DELIVERY_STATUS_SUCCEEDED,
    "failed": webhooks_pb2.DELIVERY_STATUS_FAILED,
}


def endpoint_to_proto(row: models.WebhookEndpoint) -> webhooks_pb2.WebhookEndpoint:
    return webhooks_pb2.WebhookEndpoint(
        endpoint_id=row.id,
        client_id=row.client_id,
        url=row.url,
        event_types=row.event_types,
        description=row.description,
        create_time=convert.timestamp(row.created_at),
    )


def delivery_to_proto(row: models.WebhookDelivery) -> webhooks_pb2.WebhookDelivery:
    return webhooks_pb2.WebhookDelivery(
        delivery_id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        endpoint_id=row.endpoint_id,
        status=_STATUS[row.status],
        attempts=row.attempts,
        last_http_status=row.last_http_status,
        last_error=row.last_error,
        create_time=convert.timestamp(row.created_at),
        last_attempt_time=convert.timestamp(row.last_attempt_at),
        next_attempt_time=convert.timestamp(
            row.next_attempt_at if row.status == "pending" else None
        ),
        payload=row.payload,
    )


class WebhookHandlers(Handlers, webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, db: Database, key: webhooks.WebhookKey, allow_insecure: bool) -> None:
        super().__init__(db)
        self.key = key
        self.allow_insecure = allow_insecure

    async def CreateWebhookEndpoint(
        self, request: webhooks_pb2.CreateWebhookEndpointRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookEndpointResponse:
        actor = current_principal()
        row, secret = await self.db.run(
            lambda s: webhooks.create_endpoint(
                s,
                actor,
                self.key,
                self.allow_insecure,
                request.client_id,
                request.url,
                list(request.event_types),
                request.description,
            )
        )
        return webhooks_pb2.CreateWebhookEndpointResponse(
            endpoint=endpoint_to_proto(row), signing_secret=secret
        )

    async def ListWebhookEndpoints(
        self, request: webhooks_pb2.ListWebhookEndpointsRequest, context: Context
    ) -> webhooks_pb2.ListWebhookEndpointsResponse:
        actor = current_principal()
        rows, token = await self.db.run(
            lambda s: webhooks.list_endpoints(
                s, actor, request.client_id, request.page_size, request.page_token
            )
        )
        return webhooks_pb2.ListWebhookEndpointsResponse(
            endpoints=[endpoint_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteWebhookEndpoint(
        self, request: webhooks_pb2.DeleteWebhookEndpointRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookEndpointResponse:
        actor = current_principal()
        await self.db.run(lambda s: webhooks.delete_endpoint(s, actor, request.endpoint_id))
        return webhooks_pb2.DeleteWebhookEndpointResponse()

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        actor = current_principal()
        rows, token = await self.db.run(
            lambda s: webhooks.list_deliveries(
                s,
                actor,
                request.endpoint_id,
                request.client_id,
                request.page_size,
                request.page_token,
            )
        )
        return webhooks_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(r) for r in rows], next_page_token=token
        )
