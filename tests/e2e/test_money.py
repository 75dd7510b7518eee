"""Exact money over a mixed run: the real mesh (KAM, orchestrator, granulator) on the `openai`
provider against a scripted local OpenAI server. One client's requests succeed, are re-asked,
fail and are retried, re-run below the quality gate, fail it, time out (and are retried through
KAM), and are cancelled. Afterwards what the client was charged equals, to the micro-dollar,
the sum of every attempt's cost as the orchestrator recorded it; each request's charge equals
its execution's usage; and nothing stays reserved."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core import convert
from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from tests.common import Client, make_client
from tests.granulator.fake_openai import FakeOpenAI, failure, reply

COURSE = next(t for t in SEED_TEMPLATES if t.name == "course_standard")
QUIZ = next(t for t in SEED_TEMPLATES if t.name == "quiz_standard")
TERMINAL = (
    requests_pb2.REQUEST_STATUS_COMPLETED,
    requests_pb2.REQUEST_STATUS_FAILED,
    requests_pb2.REQUEST_STATUS_CANCELLED,
)


@pytest.fixture
async def openai_mesh(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key="sk-test",
            model="gpt-4o-mini",
            timeout=60.0,
            max_retries=0,
        ),
    )
    running = await start_mesh(tmp_path, base=settings)
    try:
        yield running
    finally:
        await running.stop()


def _course(tokens: int) -> Any:
    document = generate_offline(COURSE, "Networking", "students", 3, {})
    return reply(document, prompt_tokens=tokens, completion_tokens=tokens // 3)


def _repeated_objectives() -> Any:
    course = copy.deepcopy(generate_offline(COURSE, "Networking", "students", 3, {}))
    for module in course["modules"]:
        for lesson in module["lessons"]:
            lesson["objectives"] = ["Understand networking"] * len(lesson["objectives"])
    return reply(course, prompt_tokens=1111, completion_tokens=777)


def _broken_quiz() -> Any:
    quiz = generate_offline(QUIZ, "Networking", "students", 3, {})
    for question in quiz["questions"]:
        for option in question["options"]:
            option["correct"] = True
    return reply(quiz, prompt_tokens=1234, completion_tokens=567)


def _slow_course() -> Any:
    """A reply that streams for about 20 s: it is stopped long before it ends."""
    document = generate_offline(COURSE, "Networking", "students", 3, {})
    return reply(document, pieces=40, chunk_delay=0.5)


class Session:
    """The client's side of the run: requests through KAM, executions read on the orchestrator."""

    def __init__(self, mesh: InProcessMesh, client: Client, fake: FakeOpenAI) -> None:
        self.mesh, self.client, self.fake = mesh, client, fake
        self.kam = grpc.aio.insecure_channel(mesh.kam.address)
        self.requests = requests_pb2_grpc.RequestServiceStub(self.kam)
        self.orchestrator = grpc.aio.insecure_channel(mesh.orchestrator.address)
        self.executions = orchestrator_pb2_grpc.OrchestratorServiceStub(self.orchestrator)
        self.request_ids: list[str] = []

    async def close(self) -> None:
        await self.kam.close()
        await self.orchestrator.close()

    async def submit(self, structure_type: int, template: str = "") -> str:
        spec = common_pb2.ContentSpec(
            topic="Networking", structure_type=structure_type, audience="students", granularity=3
        )
        created = await self.requests.CreateRequest(
            requests_pb2.CreateRequestRequest(spec=spec, master_template=template),
            metadata=self.client.key,
            timeout=10,
        )
        request_id = created.request.request_id
        await self.requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=request_id),
            metadata=self.client.key,
            timeout=10,
        )
        self.request_ids.append(request_id)
        return request_id

    async def request(self, request_id: str) -> requests_pb2.ClientRequest:
        got = await self.requests.GetRequest(
            requests_pb2.GetRequestRequest(request_id=request_id),
            metadata=self.client.key,
            timeout=10,
        )
        return got.request

    async def settled(self, request_id: str, within: float = 60.0) -> requests_pb2.ClientRequest:
        """The request once it has ended and its charge matches its execution's usage."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            request = await self.request(request_id)
            if request.status in TERMINAL and request.reserved_usd == 0:
                execution = await self.execution(request.execution_id)
                if request.usage.cost_micros == execution.usage.cost_micros and not any(
                    not attempt.HasField("end_time")
                    for stage in execution.stages
                    for attempt in stage.attempts
                ):
                    return request
            assert asyncio.get_running_loop().time() < deadline, request
            await asyncio.sleep(0.1)

    async def execution(self, execution_id: str) -> orchestrator_pb2.Execution:
        got = await self.executions.GetExecution(
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
            metadata=self.client.key,
            timeout=10,
        )
        return got.execution

    async def hasty_template(self) -> str:
        """A course template whose one stage may take 2 s and is tried once."""
        await templates_pb2_grpc.TemplateServiceStub(self.kam).CreateMasterTemplate(
            templates_pb2.CreateMasterTemplateRequest(
                template=templates_pb2.MasterTemplate(
                    name="course_hasty",
                    description="A course in two seconds or not at all.",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    stages=[
                        templates_pb2.StageDefinition(
                            order=1,
                            name="generate",
                            capability="granulate",
                            action="generate",
                            structure_template="course",
                            timeout=convert.duration(2.0),
                            retry_policy=templates_pb2.RetryPolicy(max_attempts=1),
                        )
                    ],
                    cost_estimate_usd=0.05,
                )
            ),
            metadata=self.client.admin,
            timeout=10,
        )
        return "course_hasty"


async def test_the_client_is_charged_exactly_what_every_attempt_cost(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    client = await make_client(openai_mesh)
    run = Session(openai_mesh, client, fake_openai)
    course, quiz = common_pb2.STRUCTURE_TYPE_COURSE, common_pb2.STRUCTURE_TYPE_QUIZ
    try:
        # 1. Succeeds at once.
        fake_openai.add(_course(1001))
        done = await run.settled(await run.submit(course))
        assert done.status == requests_pb2.REQUEST_STATUS_COMPLETED

        # 2. Re-asked: the first reply is not JSON; both calls are paid.
        fake_openai.add(reply("not json at all", prompt_tokens=900, completion_tokens=5))
        fake_openai.add(_course(1003))
        reasked = await run.settled(await run.submit(course))
        assert reasked.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert reasked.usage.llm_calls == 2

        # 3. The first attempt fails (a provider outage), the stage's retry succeeds.
        fake_openai.add(failure(503), _course(1005))
        retried = await run.settled(await run.submit(course))
        assert retried.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert len((await run.execution(retried.execution_id)).stages[0].attempts) == 2

        # 4. Below the quality gate once, then good: both attempts are paid.
        fake_openai.add(_repeated_objectives(), _course(1007))
        rerun = await run.settled(await run.submit(course))
        assert rerun.status == requests_pb2.REQUEST_STATUS_COMPLETED

        # 5. Never good enough: fails with QUALITY_BELOW_MINIMUM, all three attempts paid.
        fake_openai.add(*(_broken_quiz() for _ in range(3)))
        broken = await run.settled(await run.submit(quiz))
        assert broken.status == requests_pb2.REQUEST_STATUS_FAILED
        assert broken.usage.prompt_tokens == 3 * 1234

        # 6. Times out mid-reply: the worker is stopped and the attempt's tokens so far are
        # paid; retried through KAM, it then succeeds and the request follows.
        hasty = await run.hasty_template()
        fake_openai.add(_slow_course())
        timed_out_id = await run.submit(course, hasty)
        timed_out = await run.settled(timed_out_id)
        assert timed_out.status == requests_pb2.REQUEST_STATUS_FAILED
        execution = await run.execution(timed_out.execution_id)
        assert execution.error.reason == "STAGE_TIMEOUT"
        [stopped] = execution.stages[0].attempts
        assert stopped.status == orchestrator_pb2.ATTEMPT_STATUS_TIMED_OUT
        assert stopped.usage.prompt_tokens > 0 and stopped.usage.cost_micros > 0
        fake_openai.add(_course(1011))
        await run.requests.RetryRequest(
            requests_pb2.RetryRequestRequest(request_id=timed_out_id),
            metadata=client.key,
            timeout=10,
        )
        recovered = await run.settled(timed_out_id)
        assert recovered.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert recovered.usage.cost_micros > stopped.usage.cost_micros

        # 7. Cancelled while the model is answering: the tokens so far are paid.
        fake_openai.add(_slow_course())
        requests_before = len(fake_openai.requests)
        cancelled_id = await run.submit(course)
        await asyncio.wait_for(fake_openai.wait_for_requests(requests_before + 1), 30)
        await asyncio.sleep(1.0)  # a little of the reply streams in
        await run.requests.CancelRequest(
            requests_pb2.CancelRequestRequest(request_id=cancelled_id),
            metadata=client.key,
            timeout=30,
        )
        cancelled = await run.settled(cancelled_id)
        assert cancelled.status == requests_pb2.REQUEST_STATUS_CANCELLED
        assert cancelled.usage.prompt_tokens > 0 and cancelled.usage.cost_micros > 0

        # The invariant, to the micro-dollar.
        attempts_micros = 0
        for request_id in run.request_ids:
            request = await run.request(request_id)
            execution = await run.execution(request.execution_id)
            per_attempt = [a.usage.cost_micros for s in execution.stages for a in s.attempts]
            assert sum(per_attempt) == execution.usage.cost_micros, request_id
            assert request.usage.cost_micros == execution.usage.cost_micros, request_id
            assert round(request.cost_usd * 1_000_000) == request.usage.cost_micros
            assert request.reserved_usd == 0
            attempts_micros += sum(per_attempt)
        ledger = await accounts_pb2_grpc.ClientServiceStub(run.kam).GetUsage(
            accounts_pb2.GetUsageRequest(client_id=client.client_id),
            metadata=client.key,
            timeout=10,
        )
        assert round(ledger.spent_usd * 1_000_000) == attempts_micros
        assert ledger.reserved_usd == 0
        # Every priced call reached the ledger: the endpoint's reported tokens are a floor
        # (stopped calls add estimates on top).
        reported = 1001 + 900 + 1003 + 1005 + 1111 + 1007 + 3 * 1234 + 1011
        charged = sum(line.usage.prompt_tokens for line in ledger.by_request)
        assert charged > reported
    finally:
        await run.close()
