"""How the orchestrator follows a worker's progress: it asks for batches (several events per
WatchProgress message), still reads a worker that sends one event per message, and opens no
stream at all for an attempt whose worker said in its Handshake that it reports no progress.
Driven through the real orchestrator by scripted workers (real gRPC servers on port 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bitware.orchestrator.v1 import orchestrator_pb2
from tests.common import Client
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]
FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def progress_of(events: list[orchestrator_pb2.ExecutionEvent]) -> list[str]:
    return [e.message for e in events if e.type == orchestrator_pb2.EVENT_TYPE_STAGE_PROGRESS]


async def test_progress_is_asked_for_in_batches_and_every_event_reaches_the_log(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    worker = await workers("batching", default=Step(delay=0.2, progress=FRACTIONS))
    execution_id = await runner.start("one_stage")
    events = await runner.events(execution_id)

    assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    assert [w.batched for w in worker.watches] == [True]
    assert worker.progress_messages == 1  # four events, one message
    assert progress_of(events) == ["working"] * len(FRACTIONS)


async def test_a_worker_that_sends_one_event_per_message_is_still_read_whole(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    worker = await workers("older", default=Step(delay=0.2, progress=FRACTIONS))
    worker.ignores_batched = True
    execution_id = await runner.start("one_stage")
    events = await runner.events(execution_id)

    assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    assert worker.progress_messages == len(FRACTIONS)
    assert progress_of(events) == ["working"] * len(FRACTIONS)


async def test_a_worker_that_reports_no_progress_costs_no_stream(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2)])
    worker = await workers("quiet", default=Step(no_progress=True))
    execution_id = await runner.start("two_stages")
    events = await runner.events(execution_id)

    assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
    assert len(worker.processed) == 2
    assert worker.watches == [] and progress_of(events) == []
