"""The record of every model call: the whole mesh on a scripted OpenAI-compatible server keeps
each call of a job (request, reply or error, latency, tokens, cost, why it was made), bounded
and without secrets, and `GranulatorService.ListModelCalls` returns it to the job's client only."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.auth import ADMIN, Principal
from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_core.db import Database
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from granulator_server import calls, jobs, models
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from granulator_server.providers.base import CallRecord
from tests.common import Client, make_client, submit
from tests.granulator.fake_openai import FakeOpenAI, failure, reply
from tests.granulator.test_service import field_violations
from tests.granulator.test_template_store import MIGRATIONS

QUIZ = next(t for t in SEED_TEMPLATES if t.structure_type == "quiz")
API_KEY = "sk-test-never-stored-0123456789"


@pytest.fixture
async def openai_mesh(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key=API_KEY,
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


async def run_quiz(client: Client) -> orchestrator_pb2.Execution:
    """Runs a quiz request to its end; returns the finished execution."""
    mesh = client.mesh
    spec = common_pb2.ContentSpec(
        topic="Rust", structure_type=common_pb2.STRUCTURE_TYPE_QUIZ, granularity=2
    )
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as channel,
    ):
        _, execution_id = await submit(kam, client, spec)
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        watch = orchestrator.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
            metadata=client.key,
            timeout=60,
        )
        try:
            async for _ in watch:
                pass
        finally:
            watch.cancel()
        answer = await orchestrator.GetExecution(
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
            metadata=client.key,
            timeout=10,
        )
    return answer.execution


async def list_calls(
    client: Client, metadata: Any, **request: Any
) -> granulator_pb2.ListModelCallsResponse:
    async with grpc.aio.insecure_channel(client.mesh.granulators[0].address) as channel:
        return await granulator_pb2_grpc.GranulatorServiceStub(channel).ListModelCalls(
            granulator_pb2.ListModelCallsRequest(**request), metadata=metadata, timeout=10
        )


async def test_every_call_is_kept_with_its_job_with_why_it_was_made(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    document = generate_offline(QUIZ, "Rust", "", 2, {})
    fake_openai.add(
        failure(429, "slow down", headers={"Retry-After": "0.1"}),
        reply("this is not JSON", prompt_tokens=300, completion_tokens=5),
        reply(document, prompt_tokens=700, completion_tokens=400),
    )
    client = await make_client(openai_mesh)
    execution = await run_quiz(client)
    assert orchestrator_pb2.ExecutionStatus.Name(execution.status) == "EXECUTION_STATUS_SUCCEEDED"

    listed = await list_calls(client, client.key, execution_id=execution.execution_id)
    calls = list(listed.calls)
    assert [c.sequence for c in calls] == [1, 2, 3]
    assert [c.why for c in calls] == ["first", "RATE_LIMITED", "INVALID_JSON"]
    assert execution.usage.llm_calls == len(calls)
    first, second, third = calls
    assert {c.job_id for c in calls} == {execution.job_id}
    assert first.stage_id and first.attempt == 1

    # The failed call: its error, no reply, no tokens.
    assert first.error.startswith("429") and "slow down" in first.error
    assert (first.reply, first.prompt_tokens, first.completion_tokens) == ("", 0, 0)
    # The unusable reply, and the re-ask that carries its errors.
    assert (second.reply, second.finish_reason) == ("this is not JSON", "stop")
    assert (second.prompt_tokens, second.completion_tokens) == (300, 5)
    assert [m.role for m in third.messages] == ["system", "user", "assistant", "user"]
    assert third.messages[2].content == "this is not JSON"
    assert "cannot be used" in third.messages[3].content
    assert json.loads(third.reply) == document
    assert third.cost_usd == pytest.approx((700 * 0.15 + 400 * 0.60) / 1e6)
    assert sum(c.prompt_tokens for c in calls) == execution.usage.prompt_tokens

    # The request as sent: model, mode, parameters, messages; the endpoint, never the key.
    assert {(c.model, c.endpoint) for c in calls} == {("gpt-4o-mini", "openai")}
    assert first.format_mode == "json_schema"
    assert json.loads(first.response_format)["type"] == "json_schema"
    assert json_format.MessageToDict(first.parameters)["max_tokens"] > 0
    assert not any(c.tokens_estimated for c in calls)
    assert [m.role for m in first.messages] == ["system", "user"]
    assert "Rust" in first.messages[1].content
    assert all(c.latency.ToMilliseconds() >= 0 and c.start_time.seconds for c in calls)
    assert not any(c.truncated for c in calls)

    # The same calls by job; and nowhere in the database is the API key.
    by_job = await list_calls(client, client.key, job_id=execution.job_id)
    assert list(by_job.calls) == calls
    database = str(openai_mesh.granulators[0].db.engine.url.database)
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT * FROM model_calls").fetchall()
    assert len(rows) == 3
    assert API_KEY not in repr(rows)


async def test_calls_are_read_only_by_the_jobs_client_and_the_request_is_checked(
    openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(generate_offline(QUIZ, "Rust", "", 2, {})))
    client = await make_client(openai_mesh)
    other = await make_client(openai_mesh)
    execution = await run_quiz(client)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await list_calls(other, other.key, job_id=execution.job_id)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    foreign = await list_calls(other, other.key, execution_id=execution.execution_id)
    assert not foreign.calls
    # Staff see every client's calls.
    staff = await list_calls(client, client.admin, job_id=execution.job_id)
    assert len(staff.calls) == 1

    for request, field in (
        ({}, "job_id"),
        ({"job_id": execution.job_id, "execution_id": execution.execution_id}, "job_id"),
        ({"job_id": execution.job_id, "page_token": "nonsense"}, "page_token"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await list_calls(client, client.key, **request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(raised.value)


def call_record(**fields: Any) -> CallRecord:
    request = {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}],
        "max_tokens": 10,
        "repeat_penalty": 1.1,
    }
    return CallRecord(
        **{
            "endpoint": "local",
            "model": "m",
            "mode": "prompt",
            "why": "first",
            "request": request,
            "started_at": 1_800_000_000.0,
            **fields,
        }
    )


def test_long_texts_are_cut_and_say_so() -> None:
    long = "x" * (calls.MAX_TEXT + 1234)
    cut = f"{'x' * calls.MAX_TEXT}… [cut: 1234 more characters]"
    request = {"model": "m", "messages": [{"role": "assistant", "content": long}]}

    row = calls.row_of(call_record(request=request, content=long), 0.0)

    assert row["reply"] == cut and row["messages"][0]["content"] == cut
    assert row["truncated"]
    short = calls.row_of(call_record(content="{}"), 0.25)
    assert not short["truncated"]
    assert short["parameters"] == {"max_tokens": 10, "repeat_penalty": 1.1}
    assert short["response_format"] == "" and short["cost_usd"] == 0.25


async def test_a_job_keeps_a_bounded_numbered_list_that_a_resumed_run_continues(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'granulator.db'}")
    db.migrate("granulator", MIGRATIONS, models.GranulatorBase.metadata)
    try:
        job = await db.run_tx(
            lambda tx: jobs.start(
                tx,
                client_id="cli_1",
                execution_id="exe_1",
                stage_id="stg_1",
                attempt=1,
                action="generate",
                spec={},
                structure_type="quiz",
                template_name="quiz_standard",
                worker_id="granulator-1",
            )
        )
        row = calls.row_of(call_record(), 0.0)
        # Two runs of the same job (the first interrupted): numbering goes on, up to the bound.
        rows = [row] * (calls.MAX_CALLS // 2 + 3)
        for _ in range(2):
            await db.run_tx(lambda tx: calls.store(tx, job.id, rows))
        principal = Principal(kind="user", role=ADMIN)
        listed, _ = db.run_sync(
            lambda s: calls.list_calls(
                s, principal, job_id=job.id, execution_id="", page_size=200, page_token=""
            )
        )
        assert [c.sequence for c, _ in listed] == list(range(1, calls.MAX_CALLS + 1))
    finally:
        db.close()
