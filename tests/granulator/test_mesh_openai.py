"""The whole mesh with the granulator configured for an OpenAI-compatible endpoint (a scripted
local server): a request runs through KAM and the orchestrator on the `openai` provider, and its
usage (tokens of every call, cost from the price table) reaches the execution."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import OpenAISettings, ProviderSettings, QueueSettings, Settings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from tests.common import make_client
from tests.granulator.fake_openai import (
    LLAMA_CPP_REJECTION,
    FakeOpenAI,
    failure,
    reply,
    request_mode,
)

COURSE = next(t for t in SEED_TEMPLATES if t.structure_type == "course")


@pytest.fixture
async def openai_mesh(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key="sk-test",
            model="gpt-4o-mini",
            timeout=5.0,
            max_retries=1,
        ),
    )
    running = await start_mesh(tmp_path, base=settings)
    try:
        yield running
    finally:
        await running.stop()


async def run_course(mesh: InProcessMesh) -> list[orchestrator_pb2.ExecutionEvent]:
    """Creates and executes a course request; the execution's events to its end."""
    client = await make_client(mesh)
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
    ):
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(
                    topic="Compilers",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    audience="students",
                    granularity=3,
                )
            ),
            metadata=client.key,
            timeout=10,
        )
        executed = await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
            metadata=client.key,
            timeout=10,
        )
        watch = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=executed.execution_id),
            metadata=client.key,
            timeout=30,
        )
        try:
            return [m.event async for m in watch]
        finally:
            watch.cancel()


async def test_request_runs_on_the_openai_provider_with_counted_usage(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    document = generate_offline(COURSE, "Compilers", "students", 3, {})
    fake_openai.add(
        failure(429, headers={"Retry-After": "0.1"}),
        reply(document, pieces=16, prompt_tokens=2000, completion_tokens=1000),
    )

    events = await run_course(openai_mesh)

    assert orchestrator_pb2.EventType.Name(events[-1].type) == "EVENT_TYPE_EXECUTION_SUCCEEDED"
    usage = events[-1].usage
    assert usage.provider == "openai" and usage.model == "gpt-4o-mini"
    assert (usage.prompt_tokens, usage.completion_tokens) == (2000, 1000)
    assert usage.llm_calls == 2  # the rate-limited call counts too
    assert usage.cost_usd == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)
    assert fake_openai.requests[1]["stream"] is True


async def test_llama_cpp_like_server_that_500s_on_json_schema_serves_the_execution(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.only_modes = {"json_object_schema", "json_object", "prompt"}
    fake_openai.rejection = LLAMA_CPP_REJECTION
    document = generate_offline(COURSE, "Compilers", "students", 3, {})
    fake_openai.add(reply(document, prompt_tokens=800, completion_tokens=600))

    events = await run_course(openai_mesh)

    assert orchestrator_pb2.EventType.Name(events[-1].type) == "EVENT_TYPE_EXECUTION_SUCCEEDED"
    assert [request_mode(r) for r in fake_openai.requests] == ["json_schema", "json_object_schema"]
    usage = events[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.llm_calls) == (800, 600, 2)


async def test_failover_reaches_the_execution_usage_per_provider(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    backup = FakeOpenAI()
    await backup.start()
    endpoints = [
        {"name": "primary", "base_url": fake_openai.base_url, "model": "big"},
        {
            "name": "backup",
            "base_url": backup.base_url,
            "model": "small",
            "input_price": 1.0,
            "output_price": 2.0,
        },
    ]
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        providers=ProviderSettings(endpoints=json.dumps(endpoints), failures=1),
        openai=OpenAISettings(timeout=5.0, max_retries=1),
    )
    fake_openai.add(failure(503, "overloaded"))
    document = generate_offline(COURSE, "Compilers", "students", 3, {})
    backup.add(reply(document, prompt_tokens=3000, completion_tokens=1000))
    mesh = await start_mesh(tmp_path, base=settings)
    try:
        events = await run_course(mesh)
    finally:
        await mesh.stop()
        await backup.stop()

    assert orchestrator_pb2.EventType.Name(events[-1].type) == "EVENT_TYPE_EXECUTION_SUCCEEDED"
    usage = events[-1].usage
    assert (usage.provider, usage.model, usage.llm_calls) == ("backup", "small", 2)
    served = {p.provider: (p.model, p.llm_calls, p.prompt_tokens) for p in usage.by_provider}
    assert served == {"primary": ("big", 1, 0), "backup": ("small", 1, 3000)}
    assert usage.cost_usd == pytest.approx((3000 * 1.0 + 1000 * 2.0) / 1e6)
