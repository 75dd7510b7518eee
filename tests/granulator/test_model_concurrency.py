"""Waiting on the model is I/O: one granulator holds many model calls in flight at once, up to
the provider's limit (`BITWARE_MAX_MODEL_CALLS`), not a handful of CPU slots. The fake server
holds every call until enough calls are waiting, so a granulator that sent fewer at once would
never be answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_mesh.inprocess import start_mesh
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from granulator_server.offers import capacity
from granulator_server.providers import OfflineProvider, OpenAIProvider
from tests.common import make_client, submit
from tests.granulator.fake_openai import FakeOpenAI, reply

COURSE = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
SPEC = {"topic": "Compilers", "audience": "students", "granularity": 3}
DOCUMENT = generate_offline(COURSE, "Compilers", "students", 3, {})


async def test_one_granulator_has_many_model_calls_in_flight(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    executions, waiting = 40, 30
    fake_openai.hold_until = waiting
    fake_openai.add(*(reply(DOCUMENT) for _ in range(executions)))
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key="sk-test",
            model="gpt-4o-mini",
            timeout=120.0,
            max_retries=0,
        ),
    )
    mesh = await start_mesh(tmp_path, base=settings)
    try:
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=1000)
        spec = common_pb2.ContentSpec(
            topic="Compilers",
            structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
            audience="students",
            granularity=3,
        )
        async with (
            grpc.aio.insecure_channel(mesh.kam.address) as kam,
            grpc.aio.insecure_channel(mesh.orchestrator.address) as channel,
        ):
            started = await asyncio.gather(*(submit(kam, client, spec) for _ in range(executions)))
            orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

            async def ended(execution_id: str) -> str:
                call = orchestrator.WatchExecution(
                    orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                    metadata=client.key,
                    timeout=150,
                )
                try:
                    events = [m.event async for m in call]
                finally:
                    call.cancel()
                return orchestrator_pb2.EventType.Name(events[-1].type)

            outcomes = await asyncio.gather(*(ended(e) for _, e in started))
    finally:
        await mesh.stop()

    assert outcomes == ["EVENT_TYPE_EXECUTION_SUCCEEDED"] * executions
    assert fake_openai.most_in_flight >= waiting
    assert len(fake_openai.requests) == executions


async def test_model_calls_in_flight_stop_at_the_provider_limit(fake_openai: FakeOpenAI) -> None:
    fake_openai.hold_until = 3  # the first three are answered together, the rest at once
    fake_openai.add(*(reply(DOCUMENT) for _ in range(7)))
    provider = OpenAIProvider(model="gpt-4o-mini", base_url=fake_openai.base_url, max_calls=3)
    try:
        generated = await asyncio.wait_for(
            asyncio.gather(*(provider.generate(COURSE, SPEC, "") for _ in range(7))), 60
        )
    finally:
        await provider.close()

    assert [g.document for g in generated] == [DOCUMENT] * 7
    assert fake_openai.most_in_flight == 3


def test_capacity_follows_the_provider_unless_configured() -> None:
    model = OpenAIProvider(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")
    assert capacity(0, 256, model) == 256
    assert capacity(0, 5000, model) == 1000  # the most the orchestrator takes
    assert capacity(0, 256, OfflineProvider()) == 4  # all CPU: a few
    assert capacity(12, 256, model) == 12
    with pytest.raises(ValueError, match="BITWARE_MAX_CONCURRENT_JOBS"):
        capacity(1001, 256, model)
    with pytest.raises(ValueError, match="BITWARE_MAX_MODEL_CALLS"):
        OpenAIProvider(model="gpt-4o-mini", max_calls=0)
