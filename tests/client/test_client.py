"""bitware_client against a real in-process mesh: run, watch with resume, typed errors with the
google.rpc details, retries of UNAVAILABLE, and the blocking Client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import grpc
import pytest

from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2
from bitware_client import (
    AsyncClient,
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProgressEvent,
    ResourceExhausted,
    Retry,
    Unauthenticated,
    Unavailable,
)
from bitware_core.config import KamSettings, QueueSettings, Settings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from tests.client.proxy import Proxy
from tests.common import PARKED_CAPABILITY, free_port, make_client
from tests.common import Client as MeshClient
from tests.kam.helpers import parked_template
from tests.metrics import stream_messages


def connect(mesh: InProcessMesh, api_key: str, **options: object) -> AsyncClient:
    return AsyncClient(
        mesh.kam.address,
        orchestrator=mesh.orchestrator.address,
        granulator={"granulator-1": mesh.granulators[0].address},
        api_key=api_key,
        **options,  # type: ignore[arg-type]
    )


def contiguous(events: list[ProgressEvent]) -> None:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].terminal
    assert not any(e.terminal for e in events[:-1])


async def test_run_returns_the_structure_and_every_event_in_order(client: MeshClient) -> None:
    seen: list[ProgressEvent] = []
    async with connect(client.mesh, client.api_key) as bitware:
        result = await bitware.run("AI Development", type="course", on_event=seen.append)
    assert result.succeeded
    assert result.request.status == 3  # REQUEST_STATUS_COMPLETED
    assert result.structure is not None and len(result.structure.elements) > 1
    assert result.structure.job_id == result.execution.job_id
    contiguous(seen)
    assert seen[-1].type == "execution_succeeded" and seen[-1].progress == 1.0


async def test_watch_asks_for_batches_and_still_yields_every_event_one_by_one(
    client: MeshClient,
) -> None:
    mesh = client.mesh
    async with connect(mesh, client.api_key) as bitware:
        seen: list[ProgressEvent] = []
        before = stream_messages(mesh.orchestrator.metrics)
        result = await bitware.run("Batches", type="course", on_event=seen.append)
        live = stream_messages(mesh.orchestrator.metrics) - before
        contiguous(seen)
        # The events one transaction writes (a claim's, the history so far) share a message.
        assert 1 <= live < len(seen), f"{live} messages for {len(seen)} events: not batched"
        execution_id = result.execution.execution_id

        # A finished execution's history is one message, handed out one event at a time.
        before = stream_messages(mesh.orchestrator.metrics)
        replay = [e async for e in bitware.watch(execution_id, timeout=30)]
        assert stream_messages(mesh.orchestrator.metrics) - before == 1
        assert [e.sequence for e in replay] == [e.sequence for e in seen]
        assert [e.raw for e in replay] == [e.raw for e in seen]

        assert [e.sequence for e in replay[2:5]] == [3, 4, 5]

    # Leaving a live stream in the middle of its first batch ends it at the orchestrator.
    async with connect(mesh, "", session_token=client.admin_session) as admin:
        await admin.templates.create(parked_template("parked_batches"))
    async with connect(mesh, client.api_key) as bitware:
        request = await bitware.requests.create("Leave", template="parked_batches")
        parked = await bitware.requests.execute(request.request_id)
        async with contextlib.aclosing(bitware.watch(parked, timeout=30)) as events:
            async for event in events:
                assert event.sequence == 1
                assert mesh.orchestrator.hub.subscribers(parked) == 1
                break
        for _ in range(100):
            if mesh.orchestrator.hub.subscribers(parked) == 0:
                break
            await asyncio.sleep(0.05)
        assert mesh.orchestrator.hub.subscribers(parked) == 0
        await bitware.requests.cancel(request.request_id)


async def test_watch_resumes_after_the_stream_breaks_and_loses_nothing(
    client: MeshClient,
) -> None:
    mesh = client.mesh
    proxy = Proxy(mesh.orchestrator.address)
    await proxy.start()
    admin = connect(mesh, "", session_token=client.admin_session)
    bitware = AsyncClient(
        mesh.kam.address,
        orchestrator=proxy.address,
        api_key=client.api_key,
        retry=Retry(attempts=10, initial=0.1),
    )
    try:
        await admin.templates.create(parked_template("parked_watch"))
        request = await bitware.requests.create("Resume", template="parked_watch")
        execution_id = await bitware.requests.execute(request.request_id)
        events: list[ProgressEvent] = []
        async for event in bitware.watch(execution_id, timeout=60):
            events.append(event)
            if len(events) == 1:  # the execution waits in the queue: break its stream now
                proxy.cut()
                await bitware.requests.cancel(request.request_id)
    finally:
        await bitware.close()
        await admin.close()
        await proxy.stop()
    contiguous(events)
    assert events[-1].type == "execution_cancelled"
    assert proxy.connections >= 2, "the watch never reconnected"


async def test_errors_carry_reason_field_violations_and_retry_after(client: MeshClient) -> None:
    async with connect(client.mesh, client.api_key) as bitware:
        with pytest.raises(InvalidArgument) as invalid:
            await bitware.requests.create("", type="course", granularity=9)
        fields = {v.field for v in invalid.value.field_violations}
        assert {"spec.topic", "spec.granularity"} <= fields, fields
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT

        with pytest.raises(NotFound) as missing:
            await bitware.requests.get("req_doesnotexist")
        assert missing.value.reason and missing.value.domain

        with pytest.raises(PermissionDenied):
            await bitware.workers()  # staff only

        for _ in range(5):
            with pytest.raises(Unauthenticated):
                await bitware.login(client.mesh.credentials.admin_email, "wrong password")
        with pytest.raises(ResourceExhausted) as throttled:
            await bitware.login(client.mesh.credentials.admin_email, "wrong password")
        assert throttled.value.reason == "LOGIN_THROTTLED"
        assert throttled.value.retry_after is not None and throttled.value.retry_after > 60

    async with connect(client.mesh, "bw_not_a_key") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.requests.list()


async def test_unavailable_is_retried_until_the_server_answers(client: MeshClient) -> None:
    port = free_port()
    proxy = Proxy(client.mesh.kam.address, port)
    bitware = AsyncClient(
        f"127.0.0.1:{port}", api_key=client.api_key, retry=Retry(attempts=8, initial=0.2)
    )

    async def open_late() -> None:
        await asyncio.sleep(0.5)
        await proxy.start()

    opening = asyncio.create_task(open_late())
    try:
        assert await bitware.requests.list() == []
    finally:
        await opening
        await bitware.close()
        await proxy.stop()


async def test_unavailable_is_raised_once_the_retries_are_spent() -> None:
    retry = Retry(attempts=3, initial=0.2, multiplier=2)
    async with AsyncClient(f"127.0.0.1:{free_port()}", api_key="x", retry=retry) as bitware:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await bitware.requests.list()
    # Two waits of ~0.2 s and ~0.4 s (±20 %) between three tries.
    assert time.monotonic() - started >= 0.48


async def test_the_blocking_client_runs_and_watches(client: MeshClient) -> None:
    mesh = client.mesh

    def use() -> tuple[list[ProgressEvent], list[ProgressEvent], int]:
        with Client(
            mesh.kam.address,
            orchestrator=mesh.orchestrator.address,
            granulator=mesh.granulators[0].address,
            api_key=client.api_key,
        ) as bitware:
            seen: list[ProgressEvent] = []
            result = bitware.run("Sync", type="quiz", on_event=seen.append)
            assert result.structure is not None
            replay = list(bitware.watch(result.execution.execution_id, after_sequence=2))
            listed = bitware.requests.list()
            return seen, replay, len(listed)

    seen, replay, listed = await asyncio.to_thread(use)
    contiguous(seen)
    assert [e.sequence for e in replay] == [e.sequence for e in seen[2:]]
    assert replay[-1].raw.type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    assert listed == 1


async def test_a_failed_request_is_retried_and_watched_again(tmp_path: Path) -> None:
    # A stage no worker can take fails after a 1 s queue wait: a failure on demand.
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5, wait_timeout=1.0),
        kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
    )
    mesh = await start_mesh(tmp_path, settings)
    try:
        client = await make_client(mesh)
        async with connect(mesh, "", session_token=client.admin_session) as admin:
            await admin.templates.create(parked_template("parked_retry"))
        async with connect(mesh, client.api_key) as bitware:
            first = await bitware.run("Retry", template="parked_retry", timeout=60)
            assert not first.succeeded and first.structure is None
            assert first.request.status == requests_pb2.REQUEST_STATUS_FAILED
            last = first.execution.last_sequence

            execution_id = await bitware.requests.retry(first.request.request_id)
            assert execution_id == first.execution.execution_id
            again = [e async for e in bitware.watch(execution_id, after_sequence=last, timeout=60)]
            assert again[0].sequence == last + 1 and again[-1].type == "execution_failed"
            retried = await bitware.requests.get(first.request.request_id)
            assert retried.retries == 1
    finally:
        await mesh.stop()
