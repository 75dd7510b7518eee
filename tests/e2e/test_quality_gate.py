"""Nothing broken is delivered as success: the whole mesh on the `openai` provider (a scripted
local server) with the real granulator. A structure that breaks an integrity rule, or that no
attempt lifts to the stage's minimum quality, fails the stage with QUALITY_BELOW_MINIMUM: the
best attempt stays readable, the execution and the request fail with no deliverable, and every
attempt's tokens are charged. A template with `accept_below_minimum` delivers a low but intact
structure, never a broken one."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc, templates_pb2, templates_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from granulator_server.service import template_to_proto
from tests.common import Client, make_client, submit
from tests.granulator.fake_openai import FakeOpenAI, reply

COURSE = next(t for t in SEED_TEMPLATES if t.name == "course_standard")
QUIZ = next(t for t in SEED_TEMPLATES if t.name == "quiz_standard")
ATTEMPTS = 3  # the seed templates' retry policy
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 500
#: gpt-4o-mini: $0.15 and $0.60 per million prompt and completion tokens.
ATTEMPT_MICROS = (PROMPT_TOKENS * 15 + COMPLETION_TOKENS * 60) // 100


@pytest.fixture
async def openai_mesh(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key="sk-test",
            model="gpt-4o-mini",
            timeout=10.0,
            max_retries=0,
        ),
    )
    running = await start_mesh(tmp_path, base=settings)
    try:
        yield running
    finally:
        await running.stop()


def _every_option_correct() -> dict[str, Any]:
    quiz = generate_offline(QUIZ, "Networking", "students", 3, {})
    for question in quiz["questions"]:
        for option in question["options"]:
            option["correct"] = True
    return quiz


def _repeated_objectives() -> dict[str, Any]:
    course = copy.deepcopy(generate_offline(COURSE, "Networking", "students", 3, {}))
    for module in course["modules"]:
        for lesson in module["lessons"]:
            lesson["objectives"] = ["Understand networking"] * len(lesson["objectives"])
    return course


def _answer(document: dict[str, Any]) -> Any:
    return reply(document, prompt_tokens=PROMPT_TOKENS, completion_tokens=COMPLETION_TOKENS)


async def _run(
    mesh: InProcessMesh, client: Client, structure_type: int, master_template: str = ""
) -> tuple[requests_pb2.ClientRequest, orchestrator_pb2.Execution]:
    """Submits a request, waits for its execution to end, and returns both as they ended."""
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
    ):
        spec = common_pb2.ContentSpec(
            topic="Networking", structure_type=structure_type, audience="students", granularity=3
        )
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        if master_template:
            created = await requests.CreateRequest(
                requests_pb2.CreateRequestRequest(spec=spec, master_template=master_template),
                metadata=client.key,
                timeout=10,
            )
            executed = await requests.ExecuteRequest(
                requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
                metadata=client.key,
                timeout=10,
            )
            request_id, execution_id = created.request.request_id, executed.execution_id
        else:
            request_id, execution_id = await submit(kam, client, spec)
        service = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        watch = service.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
            metadata=client.key,
            timeout=60,
        )
        try:
            async for _ in watch:
                pass
        finally:
            watch.cancel()
        got = await service.GetExecution(
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
            metadata=client.key,
            timeout=10,
        )
        for _ in range(200):  # the outcome reaches KAM right after the execution ends
            request = await requests.GetRequest(
                requests_pb2.GetRequestRequest(request_id=request_id),
                metadata=client.key,
                timeout=10,
            )
            if request.request.status != requests_pb2.REQUEST_STATUS_RUNNING:
                break
            await asyncio.sleep(0.05)
        return request.request, got.execution


async def _assert_failed_below_minimum(
    mesh: InProcessMesh,
    client: Client,
    request: requests_pb2.ClientRequest,
    execution: orchestrator_pb2.Execution,
) -> None:
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "QUALITY_BELOW_MINIMUM", execution.error
    assert execution.job_id == ""
    [stage] = execution.stages
    assert stage.status == orchestrator_pb2.STAGE_STATUS_FAILED
    assert stage.error.reason == "QUALITY_BELOW_MINIMUM"
    assert len(stage.attempts) == ATTEMPTS
    assert stage.quality.below_threshold
    # Every attempt's tokens reach the stage, the execution and the request, and are charged.
    for usage in (stage.usage, execution.usage, request.usage):
        assert (usage.prompt_tokens, usage.completion_tokens) == (
            ATTEMPTS * PROMPT_TOKENS,
            ATTEMPTS * COMPLETION_TOKENS,
        )
        assert usage.cost_micros == ATTEMPTS * ATTEMPT_MICROS
    assert request.status == requests_pb2.REQUEST_STATUS_FAILED
    assert request.job_id == ""
    assert "QUALITY_BELOW_MINIMUM" in request.error_message or "acceptable" in request.error_message
    assert request.usage.cost_micros == ATTEMPTS * ATTEMPT_MICROS
    assert request.reserved_usd == 0
    # The best attempt is kept: its job shows failed, and its structure can still be read.
    assert stage.job_id
    async with grpc.aio.insecure_channel(mesh.granulators[0].address) as channel:
        granulator = granulator_pb2_grpc.GranulatorServiceStub(channel)
        job = await granulator.GetJob(
            granulator_pb2.GetJobRequest(job_id=stage.job_id), metadata=client.key, timeout=10
        )
        assert job.job.status == granulator_pb2.JOB_STATUS_FAILED
        assert job.job.error_message
        structure = await granulator.GetStructure(
            granulator_pb2.GetStructureRequest(job_id=stage.job_id),
            metadata=client.key,
            timeout=10,
        )
        assert structure.elements


async def test_a_quiz_with_every_option_correct_fails_and_is_charged(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(*(_answer(_every_option_correct()) for _ in range(ATTEMPTS)))
    client = await make_client(openai_mesh)
    request, execution = await _run(openai_mesh, client, common_pb2.STRUCTURE_TYPE_QUIZ)
    await _assert_failed_below_minimum(openai_mesh, client, request, execution)
    assert execution.stages[0].quality.integrity_failed
    # Each re-run was told what to fix.
    assert "exactly one must be correct" in fake_openai.requests[1]["messages"][1]["content"]


async def test_a_course_whose_objectives_all_repeat_fails_the_quality_gate(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(*(_answer(_repeated_objectives()) for _ in range(ATTEMPTS)))
    client = await make_client(openai_mesh)
    request, execution = await _run(openai_mesh, client, common_pb2.STRUCTURE_TYPE_COURSE)
    await _assert_failed_below_minimum(openai_mesh, client, request, execution)
    assert not execution.stages[0].quality.integrity_failed
    assert execution.stages[0].quality.score < 60


async def _lenient_template(mesh: InProcessMesh, client: Client, seed: Any) -> str:
    """A structure template (seed rules plus accept_below_minimum) and a master template that
    generates with it; returns the master template's name."""
    name = f"{seed.structure_type}_lenient"
    template = template_to_proto(seed)
    template.name = name
    template.ClearField("rules")
    template.rules.update({"accept_below_minimum": True})  # inherits the seed's other rules
    async with (
        grpc.aio.insecure_channel(mesh.granulators[0].address) as channel,
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
    ):
        created = await granulator_pb2_grpc.GranulatorServiceStub(channel).CreateTemplate(
            granulator_pb2.CreateTemplateRequest(template=template),
            metadata=client.admin,
            timeout=10,
        )
        assert created.template.rules["accept_below_minimum"] is True
        assert created.template.rules["counts"]
        await templates_pb2_grpc.TemplateServiceStub(kam).CreateMasterTemplate(
            templates_pb2.CreateMasterTemplateRequest(
                template=templates_pb2.MasterTemplate(
                    name=name,
                    description="Generate, accepting a low score when nothing better comes.",
                    structure_type=template.structure_type,
                    stages=[
                        templates_pb2.StageDefinition(
                            order=1,
                            name="generate",
                            capability="granulate",
                            action="generate",
                            structure_template=name,
                            min_quality_score=60,
                        )
                    ],
                    cost_estimate_usd=0.05,
                )
            ),
            metadata=client.admin,
            timeout=10,
        )
    return name


async def test_accept_below_minimum_delivers_a_low_but_intact_structure(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(*(_answer(_repeated_objectives()) for _ in range(ATTEMPTS)))
    client = await make_client(openai_mesh)
    name = await _lenient_template(openai_mesh, client, COURSE)
    request, execution = await _run(openai_mesh, client, common_pb2.STRUCTURE_TYPE_COURSE, name)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED, execution.error
    [stage] = execution.stages
    assert len(stage.attempts) == ATTEMPTS  # it still tried to do better
    assert stage.quality.below_threshold and not stage.quality.integrity_failed
    assert request.status == requests_pb2.REQUEST_STATUS_COMPLETED
    assert request.job_id == execution.job_id == stage.job_id
    assert request.usage.cost_micros == ATTEMPTS * ATTEMPT_MICROS


async def test_accept_below_minimum_never_delivers_a_broken_structure(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(*(_answer(_every_option_correct()) for _ in range(ATTEMPTS)))
    client = await make_client(openai_mesh)
    name = await _lenient_template(openai_mesh, client, QUIZ)
    request, execution = await _run(openai_mesh, client, common_pb2.STRUCTURE_TYPE_QUIZ, name)
    await _assert_failed_below_minimum(openai_mesh, client, request, execution)
