"""The gateway app over the real in-process mesh: through httpx's ASGI transport (lifespan run
explicitly), or served by uvicorn on a free port when a test needs a real connection."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest

from bitware_core.config import PeerSettings, Settings, TLSSettings
from bitware_mesh.inprocess import InProcessMesh
from gateway.app import GatewayServer, bind, create_app
from tests.common import Client


def gateway_settings(mesh: InProcessMesh, tls: TLSSettings | None = None, **peers: Any) -> Settings:
    """Settings of a gateway in front of `mesh`; `peers` overrides the mesh's addresses."""
    addresses = PeerSettings(
        kam_address=mesh.kam.address,
        orchestrator_address=mesh.orchestrator.address,
        granulator_address=mesh.granulators[0].address if mesh.granulators else "",
    )
    return Settings(peers=replace(addresses, **peers), tls=tls or TLSSettings())


def closed_address() -> str:
    """A loopback address nothing listens on (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def gateway_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield http


@asynccontextmanager
async def served_gateway(settings: Settings) -> AsyncIterator[str]:
    """uvicorn serving the gateway for real; yields its base URL."""
    server = GatewayServer(create_app(settings), settings, bind(settings))
    serving = asyncio.create_task(server.run_until_stopped())
    try:
        await asyncio.wait_for(server.ready.wait(), timeout=10)
        yield f"http://{server.address}"
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(gateway_settings(client.mesh)) as gateway:
        yield gateway


def key(client: Client) -> dict[str, str]:
    return {"X-API-Key": client.api_key}


def admin(client: Client) -> dict[str, str]:
    return {"x-bitware-session-token": client.admin_session}


def parse_events(text: str) -> list[dict[str, Any]]:
    """SSE frames → [{"id": "1", "event": "...", "data": {...}}], comments and retry skipped."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event"):
                fields[name] = value
            elif name == "data":
                fields["data"] = json.loads(value)
        if "event" in fields:
            events.append(fields)
    return events


async def create_and_execute(
    http: httpx.AsyncClient, client: Client, **spec: Any
) -> tuple[str, str]:
    """Creates a course request with the client's key and executes it: (request id, execution
    id)."""
    body = {"topic": "AI Development", "structure_type": "course", "audience": "beginners"}
    created = await http.post("/api/requests", json={**body, **spec}, headers=key(client))
    assert created.status_code == 200, created.text
    request_id = created.json()["request"]["request_id"]
    executed = await http.post(f"/api/requests/{request_id}/execute", headers=key(client))
    assert executed.status_code == 200, executed.text
    return request_id, executed.json()["execution_id"]
