"""The execution's event log as Server-Sent Events: order, resume, end, and clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from bitware_mesh.inprocess import InProcessMesh, start_mesh
from gateway.app import create_app
from tests.common import Client, make_client
from tests.gateway.conftest import (
    closed_address,
    create_and_execute,
    gateway_client,
    gateway_settings,
    key,
    parse_events,
    served_gateway,
)
from tests.metrics import stream_messages, value


async def test_events_stream_in_order_until_the_execution_succeeds(
    http: httpx.AsyncClient, client: Client
) -> None:
    _, execution_id = await create_and_execute(http, client)
    answer = await http.get(f"/api/executions/{execution_id}/events", headers=key(client))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["cache-control"] == "no-cache"
    events = parse_events(answer.text)
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["sequence"] for e in events] == [e["id"] for e in events]
    assert events[0]["event"] == "EXECUTION_QUEUED"
    assert "STAGE_PROGRESS" in {e["event"] for e in events}
    assert events[-1]["event"] == "EXECUTION_SUCCEEDED"
    assert events[-1]["data"]["type"] == "EVENT_TYPE_EXECUTION_SUCCEEDED"
    assert events[-1]["data"]["progress"] == 1.0


class Writes:
    """The gateway app, recording what each write of an event stream's body carries."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def record(message: Any) -> None:
            if message["type"] == "http.response.body" and scope["path"].endswith("/events"):
                self.bodies.append(message.get("body", b"").decode())
            await send(message)

        await self.app(scope, receive, record)

    def event_writes(self) -> list[str]:
        """The writes that carry events (not the `retry:` line, keep-alives or the end)."""
        found = [body for body in self.bodies if body.startswith("id: ")]
        self.bodies.clear()
        return found


@asynccontextmanager
async def recorded_gateway(client: Client) -> AsyncIterator[tuple[httpx.AsyncClient, Writes]]:
    app = create_app(gateway_settings(client.mesh))
    writes = Writes(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=writes)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            yield http, writes


async def test_events_come_in_batches_and_each_batch_is_one_write(client: Client) -> None:
    orchestrator = client.mesh.orchestrator.metrics
    async with recorded_gateway(client) as (http, writes):
        _, execution_id = await create_and_execute(http, client)
        url = f"/api/executions/{execution_id}/events"
        writes.event_writes()
        before = stream_messages(orchestrator)
        answer = await http.get(url, headers=key(client))
        messages = stream_messages(orchestrator) - before
        events = parse_events(answer.text)
        assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "EXECUTION_SUCCEEDED"
        # The gateway asks for batches, and writes each message it gets as one piece of whole
        # frames: nothing split, nothing lost.
        live = writes.event_writes()
        assert 1 <= messages < len(events), f"{messages} messages for {len(events)} events"
        assert len(live) == messages
        assert all(body.endswith("\n\n") for body in live)
        assert [e for body in live for e in parse_events(body)] == events

        # A finished execution's history: one message, one write, every frame with its id.
        before = stream_messages(orchestrator)
        replay = await http.get(url, headers=key(client))
        assert stream_messages(orchestrator) - before == 1
        assert [parse_events(body) for body in writes.event_writes()] == [events]
        assert parse_events(replay.text) == events

        # Resuming inside what was one batch starts right after Last-Event-ID, as before.
        resumed = await http.get(url, headers={**key(client), "Last-Event-ID": "3"})
        assert parse_events(resumed.text) == events[3:]
        assert len(writes.event_writes()) == 1


async def test_events_resume_after_last_event_id(http: httpx.AsyncClient, client: Client) -> None:
    _, execution_id = await create_and_execute(http, client)
    url = f"/api/executions/{execution_id}/events"
    everything = parse_events((await http.get(url, headers=key(client))).text)

    resumed = await http.get(url, headers={**key(client), "Last-Event-ID": "3"})
    assert [e["id"] for e in parse_events(resumed.text)] == [e["id"] for e in everything[3:]]
    assert parse_events(resumed.text)[0]["id"] == "4"

    by_query = await http.get(url, params={"after": 3}, headers=key(client))
    assert parse_events(by_query.text)[0]["id"] == "4"
    # A reconnecting browser keeps the URL it started with, so the header wins over ?after=.
    both = await http.get(url, params={"after": 1}, headers={**key(client), "Last-Event-ID": "5"})
    assert parse_events(both.text)[0]["id"] == "6"


async def test_events_of_a_finished_execution_after_its_end_answer_204(
    http: httpx.AsyncClient, client: Client
) -> None:
    _, execution_id = await create_and_execute(http, client)
    url = f"/api/executions/{execution_id}/events"
    last = parse_events((await http.get(url, headers=key(client))).text)[-1]["id"]
    # 204 is what makes an EventSource stop reconnecting.
    finished = await http.get(url, headers={**key(client), "Last-Event-ID": last})
    assert finished.status_code == 204


async def test_events_of_an_unknown_execution_are_a_json_404(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.get("/api/executions/exe_nope/events", headers=key(client))
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NOT_FOUND"


async def test_a_last_event_id_that_is_not_a_number_is_400(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.get(
        "/api/executions/exe_x/events", headers={**key(client), "Last-Event-ID": "abc"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["field_violations"][0]["field"] == "header Last-Event-ID"


@pytest.fixture
async def idle_mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    """A mesh without workers: executions stay queued, so their event streams stay open."""
    running = await start_mesh(tmp_path, granulators=0)
    try:
        yield running
    finally:
        await running.stop()


async def test_closing_the_browser_cancels_the_upstream_stream(idle_mesh: InProcessMesh) -> None:
    client = await make_client(idle_mesh)
    settings = gateway_settings(idle_mesh, granulator_address=closed_address())
    async with served_gateway(settings) as base, httpx.AsyncClient(base_url=base) as http:
        _, execution_id = await create_and_execute(http, client)
        url = f"/api/executions/{execution_id}/events"
        async with http.stream("GET", url, headers=key(client)) as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("id: "):
                    break
            # The orchestrator holds one subscription per open WatchExecution stream.
            assert idle_mesh.orchestrator.hub.subscribers(execution_id) == 1
            metrics = (await http.get("/metrics")).text
            assert value(metrics, "bitware_gateway_event_streams") == 1
        for _ in range(100):
            if idle_mesh.orchestrator.hub.subscribers(execution_id) == 0:
                break
            await asyncio.sleep(0.05)
        assert idle_mesh.orchestrator.hub.subscribers(execution_id) == 0
        metrics = (await http.get("/metrics")).text
        assert value(metrics, "bitware_gateway_event_streams") == 0


async def test_cancelling_a_queued_execution_ends_its_event_stream(
    idle_mesh: InProcessMesh,
) -> None:
    client = await make_client(idle_mesh)
    settings = gateway_settings(idle_mesh, granulator_address=closed_address())
    async with gateway_client(settings) as http:
        request_id, execution_id = await create_and_execute(http, client)
        cancelled = await http.post(
            f"/api/executions/{execution_id}/cancel",
            json={"reason": "changed my mind"},
            headers=key(client),
        )
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["execution"]["status"] == "EXECUTION_STATUS_CANCELLED"
        again = await http.post(f"/api/executions/{execution_id}/cancel", headers=key(client))
        assert again.status_code == 409
        retried = await http.post(f"/api/requests/{request_id}/retry", headers=key(client))
        assert retried.status_code == 409, retried.text
        # A client retries through KAM, never on the orchestrator itself.
        direct = await http.post(f"/api/executions/{execution_id}/retry", headers=key(client))
        assert direct.status_code == 403, direct.text

        events = parse_events(
            (await http.get(f"/api/executions/{execution_id}/events", headers=key(client))).text
        )
        assert events[-1]["event"] == "EXECUTION_CANCELLED"
