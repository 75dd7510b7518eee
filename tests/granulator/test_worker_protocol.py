"""The worker protocol of the granulator (`WorkerHandlers`) on a real SQLite database, with the
offline provider or the `openai` provider against a scripted local server: handshake checks,
reservations, idempotent Process, resumable progress, cancellation, validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core.db import Database
from granulator_server import jobs, models, template_store
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from granulator_server.errors import NoReservation, StageCancelled
from granulator_server.providers import OfflineProvider, OpenAIProvider, Provider
from granulator_server.providers.replies import estimate_tokens
from granulator_server.worker import WorkerHandlers
from tests.granulator.fake_openai import FakeOpenAI, reply

MIGRATIONS = str(Path(__file__).parents[2] / "granulator_server" / "migrations")
COURSE = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
VALID = generate_offline(COURSE, "AI Development", "beginners", 2, {})
NO_CONTEXT: Any = None


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'granulator.db'}")
    database.migrate("granulator", MIGRATIONS, models.GranulatorBase.metadata)
    await database.run(template_store.seed)
    try:
        yield database
    finally:
        database.close()


def workers(db: Database, provider: Provider | None = None, max_jobs: int = 4) -> WorkerHandlers:
    return WorkerHandlers(db, provider or OfflineProvider(), max_jobs, "granulator-test", 2)


def openai_provider(fake: FakeOpenAI, **options: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {"model": "gpt-4o-mini", "base_url": fake.base_url, "backoff": 0.01}
    return OpenAIProvider(**{**settings, **options})


def stage(name: str = "s1", attempt: int = 1, epoch: int = 1) -> worker_pb2.StageRef:
    return worker_pb2.StageRef(execution_id="ex1", stage_id=name, attempt=attempt, epoch=epoch)


def offer(
    ref: worker_pb2.StageRef | None = None,
    *,
    capability: str = "granulate",
    action: str = "generate",
    template: str = "course",
    topic: str = "AI Development",
    granularity: int = 2,
    structure_type: int = common_pb2.STRUCTURE_TYPE_COURSE,
    previous_job_id: str = "",
    feedback: str = "",
    params: dict[str, str] | None = None,
) -> worker_pb2.HandshakeRequest:
    return worker_pb2.HandshakeRequest(
        stage=ref or stage(),
        capability=capability,
        action=action,
        structure_template=template,
        params=params or {},
        client_id="client-1",
        input=worker_pb2.StageInput(
            spec=common_pb2.ContentSpec(
                topic=topic,
                structure_type=structure_type,  # type: ignore[arg-type]
                audience="beginners",
                granularity=granularity,
            ),
            previous_job_id=previous_job_id,
            feedback=feedback,
            min_quality_score=60,
        ),
    )


async def run_stage(
    handlers: WorkerHandlers, request: worker_pb2.HandshakeRequest
) -> worker_pb2.ProcessResponse:
    answer = await handlers.Handshake(request, NO_CONTEXT)
    assert answer.accepted, answer.message
    return await handlers.Process(worker_pb2.ProcessRequest(stage=request.stage), NO_CONTEXT)


async def events_of(
    handlers: WorkerHandlers, ref: worker_pb2.StageRef, after: int = 0
) -> list[worker_pb2.ProgressEvent]:
    request = worker_pb2.WatchProgressRequest(stage=ref, after_sequence=after)
    return [m.event async for m in handlers.WatchProgress(request, NO_CONTEXT)]


@pytest.mark.parametrize(
    ("request_", "reason", "words"),
    [
        (offer(template="poem"), worker_pb2.DECLINE_REASON_UNKNOWN_TEMPLATE, "poem"),
        (offer(template="", structure_type=42), worker_pb2.DECLINE_REASON_INVALID_INPUT, "type"),
        (offer(topic="  "), worker_pb2.DECLINE_REASON_INVALID_INPUT, "topic"),
        (offer(granularity=0), worker_pb2.DECLINE_REASON_INVALID_INPUT, "granularity"),
        (offer(granularity=6), worker_pb2.DECLINE_REASON_INVALID_INPUT, "granularity"),
        (offer(template="quiz"), worker_pb2.DECLINE_REASON_INVALID_INPUT, "builds quiz"),
        (offer(capability="translate"), worker_pb2.DECLINE_REASON_UNSUPPORTED, "translate"),
        (offer(action="summarise"), worker_pb2.DECLINE_REASON_UNSUPPORTED, "summarise"),
        (
            offer(capability="validate", action="validate"),
            worker_pb2.DECLINE_REASON_INVALID_INPUT,
            "previous",
        ),
        (
            offer(params={"judge_level": "7"}),
            worker_pb2.DECLINE_REASON_INVALID_INPUT,
            "judge_level",
        ),
    ],
)
async def test_handshake_declines_offers_it_cannot_serve(
    db: Database, request_: worker_pb2.HandshakeRequest, reason: int, words: str
) -> None:
    handlers = workers(db)

    answer = await handlers.Handshake(request_, NO_CONTEXT)

    assert not answer.accepted
    assert answer.decline_reason == reason
    assert words in answer.message
    assert handlers.slots.active == 0


async def test_handshake_at_capacity_declines_with_a_retry_hint(db: Database) -> None:
    handlers = workers(db, max_jobs=1)
    assert (await handlers.Handshake(offer(stage("a")), NO_CONTEXT)).accepted

    busy = await handlers.Handshake(offer(stage("b")), NO_CONTEXT)
    again = await handlers.Handshake(offer(stage("a")), NO_CONTEXT)  # same attempt: still held

    assert not busy.accepted
    assert busy.decline_reason == worker_pb2.DECLINE_REASON_AT_CAPACITY
    assert busy.retry_after.ToMilliseconds() > 0
    assert again.accepted


async def test_draining_worker_declines_new_offers(db: Database) -> None:
    handlers = workers(db)
    handlers.slots.draining = True

    answer = await handlers.Handshake(offer(), NO_CONTEXT)

    assert answer.decline_reason == worker_pb2.DECLINE_REASON_DRAINING


async def test_accepted_offer_carries_an_estimate_and_a_reservation_deadline(
    db: Database,
) -> None:
    answer = await workers(db).Handshake(offer(), NO_CONTEXT)

    assert answer.accepted and answer.worker_id == "granulator-test"
    assert answer.estimate.prompt_tokens > 100 and answer.estimate.completion_tokens > 100
    assert answer.reservation_expire_time.seconds > 0


async def test_reservation_is_released_when_process_does_not_follow(db: Database) -> None:
    handlers = workers(db, max_jobs=1)
    handlers.slots.reservation_seconds = 0.2
    assert (await handlers.Handshake(offer(stage("a")), NO_CONTEXT)).accepted

    await asyncio.sleep(0.4)

    assert handlers.slots.active == 0
    assert (await handlers.Handshake(offer(stage("b")), NO_CONTEXT)).accepted
    with pytest.raises(NoReservation):
        await handlers.Process(worker_pb2.ProcessRequest(stage=stage("a")), NO_CONTEXT)
    events = await events_of(handlers, stage("a"))
    assert events[-1].phase == worker_pb2.PHASE_CANCELLED
    assert "expired" in events[-1].message


async def test_process_without_an_offer_is_refused(db: Database) -> None:
    with pytest.raises(NoReservation):
        await workers(db).Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)


async def test_process_with_an_older_epoch_is_refused(db: Database) -> None:
    handlers = workers(db)
    await handlers.Handshake(offer(stage(epoch=2)), NO_CONTEXT)

    with pytest.raises(NoReservation):
        await handlers.Process(worker_pb2.ProcessRequest(stage=stage(epoch=1)), NO_CONTEXT)


async def test_process_is_idempotent_and_never_generates_twice(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, delay=0.2, prompt_tokens=10, completion_tokens=20))
    handlers = workers(db, openai_provider(fake_openai))
    await handlers.Handshake(offer(), NO_CONTEXT)
    process = worker_pb2.ProcessRequest(stage=stage())

    first, second = await asyncio.gather(
        handlers.Process(process, NO_CONTEXT), handlers.Process(process, NO_CONTEXT)
    )
    third = await handlers.Process(process, NO_CONTEXT)

    assert len(fake_openai.requests) == 1
    assert handlers.runner.generations == 1
    assert first == second == third
    assert first.result.job_id and first.result.quality.score >= 80
    assert first.usage.completion_tokens == 20 and first.usage.provider == "openai"
    assert first.metrics["elements"] > 10


async def test_a_finished_attempt_offered_again_is_answered_from_its_job(db: Database) -> None:
    first = workers(db)
    await first.Handshake(offer(stage(epoch=1)), NO_CONTEXT)
    done = await first.Process(worker_pb2.ProcessRequest(stage=stage(epoch=1)), NO_CONTEXT)
    # The orchestrator lost track (its holder died) and offers the same attempt again, with a
    # newer epoch, to this worker after a restart: the stored job answers, nothing is generated.
    restarted = workers(db)
    answer = await restarted.Handshake(offer(stage(epoch=2)), NO_CONTEXT)
    again = await restarted.Process(worker_pb2.ProcessRequest(stage=stage(epoch=2)), NO_CONTEXT)
    assert answer.accepted
    assert again.result.job_id == done.result.job_id
    assert restarted.runner.generations == 0


async def test_a_restarted_worker_fails_the_jobs_its_previous_process_left_running(
    db: Database,
) -> None:
    def left_running(worker_id: str, stage_id: str) -> Any:
        return db.run_tx(
            lambda tx: jobs.start(
                tx,
                client_id="client-1",
                execution_id="ex1",
                stage_id=stage_id,
                attempt=1,
                action="generate",
                spec={"topic": "AI Development", "granularity": 2},
                structure_type="course",
                template_name="course_standard",
                worker_id=worker_id,
            )
        )

    await left_running("granulator-test", "s1")  # this worker's previous process died here
    await left_running("granulator-other", "s2")  # another live granulator sharing the store
    restarted = workers(db)
    assert await restarted.runner.end_left_running() == 1
    assert await restarted.runner.end_left_running() == 0
    mine = await db.run_tx(lambda tx: jobs.find(tx, "ex1", "s1", 1))
    theirs = await db.run_tx(lambda tx: jobs.find(tx, "ex1", "s2", 1))
    assert mine is not None and mine.status == "failed"
    assert mine.result["error"]["reason"] == "WORKER_RESTARTED"
    assert theirs is not None and theirs.status == "running"
    # Offered again (the orchestrator re-attaches the attempt): the stored failure answers, as
    # a transient error the orchestrator retries; nothing is generated.
    answer = await restarted.Handshake(offer(stage(epoch=2)), NO_CONTEXT)
    again = await restarted.Process(worker_pb2.ProcessRequest(stage=stage(epoch=2)), NO_CONTEXT)
    assert answer.accepted
    assert again.error.error_class == worker_pb2.ERROR_CLASS_TRANSIENT
    assert again.error.reason == "WORKER_RESTARTED"
    assert restarted.runner.generations == 0


async def test_running_jobs_nobody_marks_alive_are_ended_as_lost(db: Database) -> None:
    def running(worker_id: str, stage_id: str) -> Any:
        return db.run_tx(
            lambda tx: jobs.start(
                tx,
                client_id="client-1",
                execution_id="ex1",
                stage_id=stage_id,
                attempt=1,
                action="generate",
                spec={"topic": "AI Development", "granularity": 2},
                structure_type="course",
                template_name="course_standard",
                worker_id=worker_id,
            )
        )

    await running("granulator-test", "mine")  # this worker's: marked alive by tending
    await running("granulator-gone", "lost")  # a granulator that died and never came back
    await running("granulator-live", "live")  # another granulator, alive and marking its jobs
    await db.run_tx(lambda tx: tx.execute("UPDATE jobs SET updated_at = '2020-01-01 00:00:00'"))
    await db.run_tx(lambda tx: jobs.touch_running(tx, "granulator-live"))

    assert await workers(db).runner.tend_jobs(stale_after=60) == 1

    found = {}
    for stage_id in ("mine", "lost", "live"):
        found[stage_id] = await db.run_tx(lambda tx, s=stage_id: jobs.find(tx, "ex1", s, 1))
    assert found["lost"] is not None and found["lost"].status == "failed"
    assert found["lost"].result["error"]["reason"] == "WORKER_LOST"
    assert found["lost"].result["error"]["error_class"] == "TRANSIENT"
    for stage_id in ("mine", "live"):
        job = found[stage_id]
        assert job is not None and job.status == "running"
        assert job.updated_at > datetime(2020, 1, 2)


async def test_progress_is_ordered_resumable_and_counts_streamed_elements(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, pieces=12, chunk_delay=0.01))
    handlers = workers(db, openai_provider(fake_openai, stream=True))
    response = await run_stage(handlers, offer())
    assert response.WhichOneof("outcome") == "result"

    events = await events_of(handlers, stage())
    resumed = await events_of(handlers, stage(), after=3)

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    phases = [e.phase for e in events]
    assert phases[0] == worker_pb2.PHASE_ACCEPTED and phases[-1] == worker_pb2.PHASE_COMPLETED
    assert phases.index(worker_pb2.PHASE_VALIDATING) < phases.index(worker_pb2.PHASE_STORING)
    streamed = [e.elements_so_far for e in events if e.phase == worker_pb2.PHASE_GENERATING]
    assert max(streamed) > 5 and streamed == sorted(streamed)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions)
    assert resumed == events[3:]


async def test_watch_progress_follows_a_running_stage_live(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, delay=0.2))
    handlers = workers(db, openai_provider(fake_openai))
    await handlers.Handshake(offer(), NO_CONTEXT)
    watcher = asyncio.create_task(events_of(handlers, stage()))
    await asyncio.sleep(0.05)

    await handlers.Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)
    events = await asyncio.wait_for(watcher, 5)

    assert events[-1].phase == worker_pb2.PHASE_COMPLETED


async def serve(handlers: WorkerHandlers) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    """The handlers behind a real gRPC server on a free port, and a channel to it."""
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(handlers, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def messages_of(
    channel: grpc.aio.Channel, ref: worker_pb2.StageRef, batched: bool, after: int = 0
) -> list[worker_pb2.WatchProgressResponse]:
    call = worker_pb2_grpc.WorkerServiceStub(channel).WatchProgress(
        worker_pb2.WatchProgressRequest(stage=ref, after_sequence=after, batched=batched),
        timeout=10,
    )
    return [message async for message in call]


async def test_batched_progress_sends_the_history_in_one_message(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, pieces=12, chunk_delay=0.01))
    handlers = workers(db, openai_provider(fake_openai, stream=True))
    server, channel = await serve(handlers)
    try:
        await run_stage(handlers, offer())
        one_by_one = await messages_of(channel, stage(), batched=False)
        batched = await messages_of(channel, stage(), batched=True)
        resumed = await messages_of(channel, stage(), batched=True, after=3)
    finally:
        await channel.close()
        await server.stop(0)

    events = [m.event for m in one_by_one]
    assert len(events) > 5 and not any(m.events for m in one_by_one)
    assert len(batched) == 1 and not batched[0].HasField("event")
    assert list(batched[0].events) == events
    assert len(resumed) == 1 and list(resumed[0].events) == events[3:]


async def test_batched_progress_follows_a_live_stage_in_fewer_messages(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, pieces=12, chunk_delay=0.01))
    handlers = workers(db, openai_provider(fake_openai, stream=True))
    server, channel = await serve(handlers)
    try:
        assert (await handlers.Handshake(offer(), NO_CONTEXT)).accepted
        watcher = asyncio.create_task(messages_of(channel, stage(), batched=True))
        await asyncio.sleep(0.05)
        await handlers.Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)
        live = await asyncio.wait_for(watcher, 10)
        afterwards = await events_of(handlers, stage())
    finally:
        await channel.close()
        await server.stop(0)

    received = [event for message in live for event in message.events]
    assert received == afterwards and received[-1].phase == worker_pb2.PHASE_COMPLETED
    assert all(message.events for message in live)
    # The prompt-built and first generating events are added together, so always travel
    # together; whatever else accumulates while a message is being sent joins it.
    assert len(live) < len(received)


async def test_cancel_stops_a_running_generation_promptly(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, delay=10.0))
    handlers = workers(db, openai_provider(fake_openai, timeout=30))
    await handlers.Handshake(offer(), NO_CONTEXT)
    process = asyncio.create_task(
        handlers.Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)
    )
    await asyncio.wait_for(fake_openai.wait_for_requests(), 5)
    started = asyncio.get_running_loop().time()

    cancelled = await handlers.Cancel(
        worker_pb2.CancelRequest(stage=stage(), reason="client cancelled"), NO_CONTEXT
    )

    assert cancelled.cancelled
    with pytest.raises(StageCancelled):
        await process
    assert asyncio.get_running_loop().time() - started < 1.0
    assert handlers.slots.active == 0
    assert (await events_of(handlers, stage()))[-1].phase == worker_pb2.PHASE_CANCELLED
    with pytest.raises(StageCancelled):  # a repeated Process does not start it again
        await handlers.Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)
    assert len(fake_openai.requests) == 1


async def test_cancel_reports_the_usage_spent_so_far(db: Database, fake_openai: FakeOpenAI) -> None:
    # The first reply is not JSON (a re-ask follows, its tokens reported by the endpoint); the
    # second streams slowly and is cut off by the cancel before the endpoint reports its usage.
    fake_openai.add(
        reply("not json", prompt_tokens=1000, completion_tokens=10),
        reply(VALID, pieces=40, chunk_delay=0.5),
    )
    handlers = workers(db, openai_provider(fake_openai, timeout=30))
    await handlers.Handshake(offer(), NO_CONTEXT)
    process = asyncio.create_task(
        handlers.Process(worker_pb2.ProcessRequest(stage=stage()), NO_CONTEXT)
    )
    await asyncio.wait_for(fake_openai.wait_for_requests(2), 10)
    await asyncio.sleep(2.0)  # a few pieces of the second reply (one each 0.5 s) have arrived

    cancelled = await handlers.Cancel(worker_pb2.CancelRequest(stage=stage()), NO_CONTEXT)

    assert cancelled.cancelled
    with pytest.raises(StageCancelled):
        await process
    usage = cancelled.usage
    assert usage.llm_calls == 2 and usage.provider == "openai"
    # The first call as reported, the cut-off one estimated (its prompt and what arrived).
    second_prompt = sum(estimate_tokens(m["content"]) for m in fake_openai.requests[1]["messages"])
    assert usage.prompt_tokens == 1000 + second_prompt
    assert usage.completion_tokens > 10  # some of the cut-off reply had arrived
    assert usage.cost_micros == round(usage.prompt_tokens * 0.15 + usage.completion_tokens * 0.6)
    # The job keeps it, and a later Cancel (the attempt has ended) answers the same.
    again = await handlers.Cancel(worker_pb2.CancelRequest(stage=stage()), NO_CONTEXT)
    assert not again.cancelled and again.usage == usage


async def test_cancel_of_a_finished_attempt_answers_its_full_usage(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID, prompt_tokens=500, completion_tokens=300))
    handlers = workers(db, openai_provider(fake_openai))
    done = await run_stage(handlers, offer())

    late = await handlers.Cancel(worker_pb2.CancelRequest(stage=stage()), NO_CONTEXT)

    assert not late.cancelled
    assert late.usage == done.usage and late.usage.prompt_tokens == 500
    assert late.usage.cost_micros == 500 * 15 // 100 + 300 * 60 // 100


async def test_cancel_of_a_reserved_offer_frees_its_slot(db: Database) -> None:
    handlers = workers(db, max_jobs=1)
    await handlers.Handshake(offer(), NO_CONTEXT)

    first = await handlers.Cancel(worker_pb2.CancelRequest(stage=stage()), NO_CONTEXT)
    second = await handlers.Cancel(worker_pb2.CancelRequest(stage=stage()), NO_CONTEXT)

    assert first.cancelled and not second.cancelled
    assert handlers.slots.active == 0


async def test_progress_logs_of_finished_stages_are_dropped_after_a_while(
    db: Database,
) -> None:
    handlers = workers(db)
    handlers.progress.retention = 60.0
    for name in ("a", "b", "c"):
        await run_stage(handlers, offer(stage(name)))
    handlers.progress.sweep()
    assert len(handlers.progress) == 3  # finished, but kept while the retention lasts

    handlers.progress.retention = 0.1
    await asyncio.sleep(0.2)
    handlers.progress.sweep()

    assert len(handlers.progress) == 0


async def test_provider_failure_is_a_typed_stage_error_with_usage(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply("", refusal="No.", prompt_tokens=30, completion_tokens=2))
    handlers = workers(db, openai_provider(fake_openai))

    response = await run_stage(handlers, offer())

    assert response.error.error_class == worker_pb2.ERROR_CLASS_REFUSED
    assert response.error.reason == "REFUSED"
    assert response.usage.prompt_tokens == 30 and response.usage.llm_calls == 1
    job = await db.run_tx(lambda tx: jobs.find(tx, "ex1", "s1", 1))
    assert job is not None and job.status == "failed"
    events = await events_of(handlers, stage())
    assert events[-1].phase == worker_pb2.PHASE_FAILED


async def test_quality_gate_feedback_reaches_the_prompt(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    fake_openai.add(reply(VALID))
    handlers = workers(db, openai_provider(fake_openai))

    await run_stage(handlers, offer(feedback="- /modules/0: too few lessons"))

    prompt = fake_openai.requests[0]["messages"][-1]["content"]
    assert "too few lessons" in prompt


async def test_offline_generation_names_itself_and_costs_nothing(db: Database) -> None:
    response = await run_stage(workers(db), offer())

    assert response.usage.provider == "offline" and response.usage.model == "offline"
    assert response.usage.cost_usd == 0 and response.usage.llm_calls == 0


async def test_validate_records_a_validation_on_the_previous_job(db: Database) -> None:
    handlers = workers(db)
    generated = await run_stage(handlers, offer(stage("generate")))
    job_id = generated.result.job_id
    previous_output = struct_pb2.Struct()
    previous_output.update({"job_id": job_id})
    request = offer(stage("validate"), capability="validate", action="validate")
    request.input.previous_output.CopyFrom(previous_output)

    validated = await run_stage(handlers, request)

    assert validated.result.job_id == job_id
    assert validated.result.quality.score == generated.result.quality.score
    assert validated.result.output["validation_job_id"] != job_id
    job = await db.run(lambda s: s.get_one(models.Job, job_id))
    assert [v["validator"] for v in job.validations] == ["rules", "rules"]


async def test_validate_with_llm_judge_blends_the_judge_into_the_quality(
    db: Database, fake_openai: FakeOpenAI
) -> None:
    handlers = workers(db)
    job_id = (await run_stage(handlers, offer(stage("generate")))).result.job_id
    verdict = {
        "ratings": {"accuracy": 5, "coherence": 5, "coverage": 5},
        "feedback": "Add examples.",
    }
    fake_openai.add(reply(json.dumps(verdict), prompt_tokens=400, completion_tokens=30))
    handlers.runner.provider = openai_provider(fake_openai)
    request = offer(
        stage("validate"),
        capability="validate",
        action="validate",
        previous_job_id=job_id,
        params={"judge_level": "2"},
    )

    validated = await run_stage(handlers, request)

    rules_score = (await db.run(lambda s: s.get_one(models.Job, job_id))).validations[0]["quality"][
        "score"
    ]
    quality = validated.result.quality
    assert quality.score == pytest.approx(0.7 * rules_score + 0.3 * 50, abs=0.1)
    assert quality.components["llm_judge"] == 0.5
    assert "Add examples." in quality.feedback
    assert validated.usage.prompt_tokens == 400 and validated.usage.provider == "openai"
    job = await db.run(lambda s: s.get_one(models.Job, job_id))
    assert [v["validator"] for v in job.validations] == ["rules", "rules", "llm_judge"]
    assert job.quality["score"] == quality.score


async def test_validate_of_a_missing_job_fails_as_invalid_input(db: Database) -> None:
    request = offer(
        stage("validate"), capability="validate", action="validate", previous_job_id="job_nope"
    )

    response = await run_stage(workers(db), request)

    assert response.error.error_class == worker_pb2.ERROR_CLASS_INVALID_INPUT
    assert response.error.reason == "NO_PREVIOUS_JOB"
