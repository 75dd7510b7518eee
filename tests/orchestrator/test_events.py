"""The execution event log: ordered, persisted, replayed to late watchers, resumable from a
sequence number, and streams that clean up when their caller goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from bitware.orchestrator.v1 import orchestrator_pb2
from tests.common import Client, eventually
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]


async def test_late_and_resuming_watchers_miss_nothing(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2)])
    await workers("steady", default=Step(delay=0.3))
    execution_id = await runner.start("two_stages")
    live = asyncio.create_task(runner.events(execution_id))

    # A watcher that drops after three events and comes back with its last sequence number.
    first_part = []
    call = runner.stub.WatchExecution(
        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
        metadata=client.admin,
        timeout=30,
    )
    async for message in call:
        first_part.append(message.event)
        if len(first_part) == 3:
            break
    call.cancel()
    rest = await runner.events(execution_id, after=first_part[-1].sequence)

    everything = await live
    late = await runner.events(execution_id)
    sequences = [e.sequence for e in everything]
    assert sequences == list(range(1, len(everything) + 1))
    assert [e.sequence for e in late] == sequences
    assert [e.sequence for e in first_part + rest] == sequences
    assert everything[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    progress = [e.progress for e in everything]
    assert progress == sorted(progress) and progress[-1] == 1.0


async def test_a_cancelled_watch_releases_its_subscription(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    await workers("slow", default=Step(delay=5))
    execution_id = await runner.start("one_stage")
    call = runner.stub.WatchExecution(
        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
        metadata=client.admin,
        timeout=30,
    )
    await call.read()
    hub = client.mesh.orchestrator.hub
    assert hub.subscribers(execution_id) == 1
    call.cancel()
    await eventually(lambda: hub.subscribers(execution_id) == 0)


async def test_watching_an_unknown_or_foreign_execution_is_not_found(
    client: Client, runner: Runner, workers: Workers
) -> None:
    from tests.common import make_client

    await add_template(client.mesh, "one_stage", [stage()])
    await workers("quick")
    execution_id = await runner.start("one_stage")
    other = await make_client(client.mesh)
    for metadata, target in ((client.admin, "exe_unknown"), (other.key, execution_id)):
        call = runner.stub.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=target),
            metadata=metadata,
            timeout=10,
        )
        try:
            await call.read()
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("expected NOT_FOUND")


async def test_resuming_after_the_last_event_of_a_finished_execution_ends_at_once(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    await workers("quick")
    execution = await runner.run("one_stage")
    started = asyncio.get_running_loop().time()
    assert await runner.events(execution.execution_id, after=execution.last_sequence) == []
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_batched_watch_gets_the_same_events_in_fewer_messages(
    client: Client, runner: Runner, workers: Workers
) -> None:
    """With `batched`, a message carries what one look at the log found: a live watcher gets
    every event in order, in `events` only; a late one gets the whole history in one message.
    Without it every message carries one event, as older clients expect."""
    await add_template(client.mesh, "two_stages", [stage(1), stage(2)])
    await workers("steady", default=Step(delay=0.2))
    execution_id = await runner.start("two_stages")

    async def watch(batched: bool) -> list[orchestrator_pb2.WatchExecutionResponse]:
        call = runner.stub.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id, batched=batched),
            metadata=client.admin,
            timeout=30,
        )
        return [message async for message in call]

    live, one_by_one = await asyncio.gather(watch(True), watch(False))
    everything = [event for message in live for event in message.events]
    assert [e.sequence for e in everything] == list(range(1, len(everything) + 1))
    assert everything[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    assert all(not m.HasField("event") and m.events for m in live)
    assert all(m.HasField("event") and not m.events for m in one_by_one)
    assert [m.event for m in one_by_one] == everything
    assert len(live) < len(one_by_one)

    [late] = await watch(True)
    assert list(late.events) == everything
