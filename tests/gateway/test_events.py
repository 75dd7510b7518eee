"""The execution's event log as Server-Sent Events: order, resume, end, and clean-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bitware_mesh.inprocess import InProcessMesh, start_mesh
from tests.conftest import Client, make_client
from tests.gateway.conftest import (
    closed_address,
    create_and_execute,
    gateway_client,
    gateway_settings,
    key,
    parse_events,
    served_gateway,
)
from tests.metrics import value


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
