"""Webhooks through the gateway: register, list, see the delivery log, delete; KAM's checks
reach the caller as 4xx with the field that is wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2
from bitware_core.config import KamSettings, QueueSettings, Settings, WebhookSettings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from tests.common import PARKED_CAPABILITY, make_client
from tests.gateway.conftest import admin, gateway_client, gateway_settings, key
from tests.kam.helpers import kam, parked_template
from tests.webhook_receiver import receiver


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(
        tmp_path,
        Settings(
            queue=QueueSettings(heartbeat_interval=0.5),
            kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
            webhooks=WebhookSettings(allow_insecure=True),
        ),
    )
    try:
        yield running
    finally:
        await running.stop()


async def test_a_client_registers_a_webhook_and_reads_its_delivery_log(
    hooked: InProcessMesh,
) -> None:
    client = await make_client(hooked)
    other = await make_client(hooked)
    with receiver() as hook:
        async with gateway_client(gateway_settings(hooked)) as http, kam(hooked) as k:
            refused = await http.post(
                "/api/webhooks", json={"url": "http://example.com/x"}, headers=key(client)
            )
            assert refused.status_code == 400, refused.text
            assert "url" in refused.text

            created = await http.post(
                "/api/webhooks", json={"url": hook.url, "description": "ci"}, headers=key(client)
            )
            assert created.status_code == 200, created.text
            endpoint = created.json()["endpoint"]
            assert created.json()["signing_secret"].startswith("whsec_")

            listed = (await http.get("/api/webhooks", headers=key(client))).json()
            assert [e["endpoint_id"] for e in listed["endpoints"]] == [endpoint["endpoint_id"]]
            assert "signing_secret" not in listed["endpoints"][0]
            theirs = (await http.get("/api/webhooks", headers=key(other))).json()
            assert theirs["endpoints"] == []

            await k.create_template(client.admin, parked_template("hooked"))
            request = await k.create_request(client.key, "hooked")
            execution_id = await k.execute(client.key, request.request_id)
            await k.requests.RecordExecutionOutcome(
                requests_pb2.RecordExecutionOutcomeRequest(
                    request_id=request.request_id,
                    execution_id=execution_id,
                    status=requests_pb2.REQUEST_STATUS_COMPLETED,
                    usage=common_pb2.Usage(cost_usd=0.01),
                ),
                metadata=client.worker("orchestrator"),
                timeout=10,
            )
            await hook.wait_for(1)
            path = f"/api/webhook-deliveries?endpoint_id={endpoint['endpoint_id']}"
            for _ in range(200):
                log = (await http.get(path, headers=key(client))).json()["deliveries"]
                if log and log[0]["status"] == "DELIVERY_STATUS_SUCCEEDED":
                    break
                await asyncio.sleep(0.1)
            (delivery,) = log
            assert delivery["status"] == "DELIVERY_STATUS_SUCCEEDED"
            assert delivery["event_type"] == "request.completed"
            assert delivery["last_http_status"] == 200 and delivery["attempts"] == 1

            # The admin reads any client's log; another client reads none of it.
            by_admin = await http.get(
                f"/api/webhook-deliveries?client_id={client.client_id}", headers=admin(client)
            )
            assert [d["delivery_id"] for d in by_admin.json()["deliveries"]] == [
                delivery["delivery_id"]
            ]
            hidden = await http.get(path, headers=key(other))
            assert hidden.status_code == 404

            gone = await http.delete(
                f"/api/webhooks/{endpoint['endpoint_id']}", headers=key(client)
            )
            assert gone.status_code == 200, gone.text
            again = await http.delete(
                f"/api/webhooks/{endpoint['endpoint_id']}", headers=key(client)
            )
            assert again.status_code == 404
