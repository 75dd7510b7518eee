"""Stage outputs: large ones travel by reference with a checksum checked on read; oversized ones
fail for good with a clear message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from bitware.orchestrator.v1 import orchestrator_pb2
from orchestrator_server import models, payloads
from tests.common import Client, eventually
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]
LARGE = payloads.INLINE_LIMIT + 1000


async def test_large_output_is_stored_by_reference_and_reaches_the_next_stage(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "pass_on", [stage(1), stage(2, capability="second")])
    await workers("producer", default=Step(output_bytes=LARGE))
    consumer = await workers("consumer", capability="second")
    execution = await runner.run("pass_on")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    first = execution.stages[0]
    assert first.output_ref.startswith("sha256:") and not first.output.fields
    assert len(consumer.offers[0].input.previous_output["filler"]) == LARGE


async def test_a_corrupted_stored_output_fails_the_next_stage_clearly(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "pass_on", [stage(1), stage(2, capability="second")])
    producer = await workers("producer", default=Step(output_bytes=LARGE))
    execution_id = await runner.start("pass_on")
    await eventually(lambda: bool(producer.processed))

    async def stage_two_waits() -> bool:
        execution = await runner.get(execution_id)
        return execution.stages[1].status == orchestrator_pb2.STAGE_STATUS_QUEUED

    for _ in range(200):
        if await stage_two_waits():
            break
    assert await stage_two_waits()

    def tamper(session: Session) -> None:
        session.execute(update(models.Blob).values(content=b'{"filler": "changed"}'))

    await client.mesh.orchestrator.db.run(tamper)
    await workers("consumer", capability="second")
    await runner.events(execution_id)
    execution = await runner.get(execution_id)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "CORRUPT_PAYLOAD"
    assert "checksum" in execution.error.message


async def test_an_oversized_output_fails_without_retrying(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=3)])
    worker = await workers("bloated", default=Step(output_bytes=payloads.HARD_LIMIT + 1))
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "OUTPUT_TOO_LARGE" and not execution.error.retryable
    assert len(worker.processed) == 1
