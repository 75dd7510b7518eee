"""The handshake dispatch, retries, the quality gate, timeouts and cancellation, driven through
the real orchestrator by scripted workers."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from bitware.orchestrator.v1 import orchestrator_pb2
from bitware.worker.v1 import worker_pb2
from tests.common import Client, eventually
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import PARTIAL_USAGE, Step

EVENT = orchestrator_pb2.EventType.Name
Workers = Callable[..., Any]


async def test_declined_offer_goes_to_another_worker_at_once(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    busy = await workers(
        "busy", default=Step(decline=worker_pb2.DECLINE_REASON_AT_CAPACITY, retry_after=30)
    )
    idle = await workers("idle")
    execution = await asyncio.wait_for(runner.run("one_stage"), 10)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    assert len(idle.processed) == 1 and not busy.processed
    statuses = [orchestrator_pb2.AttemptStatus.Name(a.status) for a in execution.stages[0].attempts]
    assert statuses[-1] == "ATTEMPT_STATUS_SUCCEEDED"


async def test_invalid_input_decline_fails_the_stage_without_retrying(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    worker = await workers("picky", default=Step(decline=worker_pb2.DECLINE_REASON_INVALID_INPUT))
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "INVALID_INPUT" and not execution.error.retryable
    assert len(worker.offers) == 1


async def test_transient_failures_are_retried_and_every_attempt_is_counted(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=3)])
    transient = Step(error_class=worker_pb2.ERROR_CLASS_TRANSIENT, reason="RATE_LIMITED")
    worker = await workers("flaky", steps=[transient, transient])
    execution_id = await runner.start("one_stage")
    events = await runner.events(execution_id)
    execution = await runner.get(execution_id)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    assert [EVENT(e.type) for e in events].count("EVENT_TYPE_STAGE_RETRY_SCHEDULED") == 2
    assert len(worker.processed) == 3
    assert execution.usage.prompt_tokens == 30 and execution.usage.completion_tokens == 15
    assert execution.stages[0].attempts[0].error.reason == "RATE_LIMITED"


async def test_retries_stop_at_max_attempts(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=2)])
    worker = await workers("broken", default=Step(error_class=worker_pb2.ERROR_CLASS_TRANSIENT))
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert len(worker.processed) == 2


async def test_refused_content_is_not_retried(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=3)])
    worker = await workers(
        "strict", default=Step(error_class=worker_pb2.ERROR_CLASS_REFUSED, reason="CONTENT_FILTER")
    )
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "CONTENT_FILTER"
    assert len(worker.processed) == 1


async def test_quality_gate_reruns_with_feedback_then_fails_keeping_the_best_result(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "gated", [stage(min_quality=80, max_attempts=3)])
    worker = await workers("mediocre", steps=[Step(score=50), Step(score=70), Step(score=60)])
    execution_id = await runner.start("gated")
    events = await runner.events(execution_id)
    execution = await runner.get(execution_id)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "QUALITY_BELOW_MINIMUM"
    assert execution.job_id == ""  # nothing is delivered
    kept = execution.stages[0]
    assert kept.status == orchestrator_pb2.STAGE_STATUS_FAILED
    assert kept.quality.score == 70 and kept.quality.below_threshold
    assert kept.job_id.endswith("-2")  # the second attempt's result was the best, and is kept
    assert "attempt 1 scored 50" in worker.offers[1].input.feedback
    assert [EVENT(e.type) for e in events].count("EVENT_TYPE_QUALITY_BELOW_THRESHOLD") == 2


async def test_accept_below_minimum_delivers_the_best_intact_result(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "gated", [stage(min_quality=80, max_attempts=3)])
    lenient = {"accept_below_minimum": True}
    await workers(
        "lenient",
        steps=[
            Step(score=75, integrity_failed=True, **lenient),  # scores best, but is broken
            Step(score=50, **lenient),
            Step(score=60, **lenient),
        ],
    )
    execution = await runner.run("gated")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    kept = execution.stages[0]
    assert kept.job_id.endswith("-3") and execution.job_id == kept.job_id
    assert kept.quality.score == 60 and kept.quality.below_threshold


async def test_an_integrity_failure_is_never_delivered(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "ungated", [stage(min_quality=0, max_attempts=2)])
    broken = Step(score=95, integrity_failed=True, accept_below_minimum=True)
    worker = await workers("broken", default=broken)
    execution = await runner.run("ungated")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "QUALITY_BELOW_MINIMUM"
    assert execution.stages[0].quality.integrity_failed
    assert len(worker.processed) == 2


async def test_quality_gate_passes_once_a_result_scores_high_enough(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "gated", [stage(min_quality=80, max_attempts=3)])
    worker = await workers("improving", steps=[Step(score=40), Step(score=85)])
    execution = await runner.run("gated")
    assert execution.stages[0].quality.score == 85
    assert not execution.stages[0].quality.below_threshold
    assert len(worker.processed) == 2


async def test_stage_timeout_fails_the_execution_with_the_reason(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "hasty", [stage(timeout_s=0.3, max_attempts=1)])
    worker = await workers("slow", default=Step(delay=3))
    execution = await runner.run("hasty")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "STAGE_TIMEOUT"
    [attempt] = execution.stages[0].attempts
    assert attempt.status == orchestrator_pb2.ATTEMPT_STATUS_TIMED_OUT
    # The worker was told to stop, and what the attempt used until then is counted.
    assert [c.stage.attempt for c in worker.cancelled] == [1]
    assert attempt.usage.cost_micros == PARTIAL_USAGE.cost_micros
    assert execution.usage.prompt_tokens == PARTIAL_USAGE.prompt_tokens
    assert execution.stages[0].usage.cost_micros == PARTIAL_USAGE.cost_micros


async def test_execution_timeout_fails_the_execution(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "bounded", [stage(timeout_s=30)], execution_timeout_s=1.0)
    worker = await workers("slow", default=Step(delay=10))
    execution_id = await runner.start("bounded")
    await eventually(lambda: bool(worker.cancelled), within=15)
    for _ in range(300):  # the stopped attempt's usage is recorded right after its Cancel
        execution = await runner.get(execution_id)
        if execution.stages[0].attempts[0].HasField("end_time"):
            break
        await asyncio.sleep(0.05)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert execution.error.reason == "EXECUTION_TIMEOUT"
    [attempt] = execution.stages[0].attempts
    assert attempt.status == orchestrator_pb2.ATTEMPT_STATUS_TIMED_OUT
    assert attempt.usage.cost_micros == execution.usage.cost_micros == PARTIAL_USAGE.cost_micros


async def test_cancel_stops_the_running_stage_on_its_worker(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    worker = await workers("slow", default=Step(delay=10))
    execution_id = await runner.start("one_stage")
    await eventually(lambda: bool(worker.processed))
    cancelled = await runner.stub.CancelExecution(
        orchestrator_pb2.CancelExecutionRequest(execution_id=execution_id, reason="changed mind"),
        metadata=runner.client.admin,
        timeout=10,
    )
    assert cancelled.execution.status == orchestrator_pb2.EXECUTION_STATUS_CANCELLED
    assert worker.cancelled[0].stage.stage_id == cancelled.execution.stages[0].stage_id
    # What the stopped attempt used is on it, its stage and the execution when Cancel returns.
    [attempt] = cancelled.execution.stages[0].attempts
    assert attempt.status == orchestrator_pb2.ATTEMPT_STATUS_CANCELLED
    assert attempt.usage.prompt_tokens == PARTIAL_USAGE.prompt_tokens
    assert cancelled.execution.usage.cost_micros == PARTIAL_USAGE.cost_micros
    events = await runner.events(execution_id)
    assert EVENT(events[-1].type) == "EVENT_TYPE_EXECUTION_CANCELLED"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await runner.stub.CancelExecution(
            orchestrator_pb2.CancelExecutionRequest(execution_id=execution_id),
            metadata=runner.client.admin,
            timeout=10,
        )
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_retry_execution_reruns_from_the_failed_stage(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2, max_attempts=1)])
    refused = Step(error_class=worker_pb2.ERROR_CLASS_INVALID_INPUT)
    worker = await workers("once-bad", steps=[Step(), refused])
    execution_id = await runner.start("two_stages")
    await runner.events(execution_id)
    failed = await runner.get(execution_id)
    assert failed.status == orchestrator_pb2.EXECUTION_STATUS_FAILED
    assert failed.stages[0].status == orchestrator_pb2.STAGE_STATUS_SUCCEEDED
    retried = await runner.stub.RetryExecution(
        orchestrator_pb2.RetryExecutionRequest(execution_id=execution_id),
        metadata=runner.client.admin,
        timeout=10,
    )
    assert retried.execution.status == orchestrator_pb2.EXECUTION_STATUS_QUEUED
    after = failed.last_sequence
    await runner.events(execution_id, after=after)
    done = await runner.get(execution_id)
    assert done.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    assert len(worker.processed) == 3  # stage 1 once, stage 2 twice — stage 1 not re-run
    # The second stage received the first stage's output as its input.
    assert worker.offers[-1].input.previous_output["attempt"] == 1


async def test_retry_refuses_an_execution_that_did_not_fail(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    await workers("fine")
    execution = await runner.run("one_stage")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await runner.stub.RetryExecution(
            orchestrator_pb2.RetryExecutionRequest(execution_id=execution.execution_id),
            metadata=runner.client.admin,
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_dead_workers_stage_is_offered_to_another_worker(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=3)])
    doomed = await workers("doomed", default=Step(delay=30))
    execution_id = await runner.start("one_stage")
    await eventually(lambda: bool(doomed.processed))
    survivor = await workers("survivor")
    await doomed.stop()  # the process dies mid-stage: its server and heartbeats are gone
    started = asyncio.get_running_loop().time()
    await runner.events(execution_id)
    execution = await runner.get(execution_id)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    assert len(survivor.processed) == 1
    assert asyncio.get_running_loop().time() - started < 15


async def test_client_concurrency_limit_runs_one_execution_at_a_time(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    worker = await workers("wide", default=Step(delay=0.4), max_concurrency=4)
    ids = [await runner.start("one_stage", concurrency=1) for _ in range(3)]
    timeline = []
    for execution_id in ids:
        await runner.events(execution_id)
        execution = await runner.get(execution_id)
        assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
        timeline.append(
            (execution.stages[0].start_time.ToDatetime(), execution.stages[0].end_time.ToDatetime())
        )
    timeline.sort()
    for (_, end), (start, _) in itertools.pairwise(timeline):
        assert start >= end  # never two at once
    assert len(worker.processed) == 3


async def test_an_execution_without_a_kam_request_is_not_reported_to_kam(
    client: Client, runner: Runner, workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """Staff may start executions straight through ExecutePipeline, with no KAM request: at
    their end there is nothing for KAM to settle, so no report is sent (KAM would refuse it,
    one warning and one wasted call per execution)."""
    await add_template(client.mesh, "one_stage", [stage()])
    await workers("w")
    caplog.set_level(logging.WARNING, logger="bitware.orchestrator")
    execution = await asyncio.wait_for(runner.run("one_stage"), 10)
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    # The report would follow the terminal event within milliseconds; give it ample time.
    with pytest.raises(AssertionError):
        await eventually(lambda: "could not report outcome" in caplog.text, within=3)
