"""GranulatorService and the granulator in the whole mesh: all six structure types end to end
through KAM and the orchestrator (offline provider), jobs with their validation history, and
structure templates stored in the granulator's database."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import AuthSettings, Settings, StorageSettings
from granulator_server import jobs
from granulator_server.domain import SEED_TEMPLATES
from granulator_server.server import GranulatorServer
from granulator_server.service import template_to_proto
from tests.common import Client, eventually, make_client

TYPES = {
    "course": ("module", "lesson", "objective"),
    "quiz": ("question", "option"),
    "novel": ("character", "act", "chapter"),
    "workflow": ("step",),
    "knowledge_map": ("concept", "relation"),
    "learning_path": ("milestone", "resource"),
}


def structure_type(name: str) -> common_pb2.StructureType.ValueType:
    return common_pb2.StructureType.Value(f"STRUCTURE_TYPE_{name.upper()}")


async def run_request(client: Client, kind: str) -> str:
    """Creates and executes a request for `kind`; returns the execution id once it succeeded."""
    mesh = client.mesh
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
    ):
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(
                    topic=f"Rust {kind}",
                    structure_type=structure_type(kind),
                    audience="engineers",
                    granularity=2,
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
            types = [orchestrator_pb2.EventType.Name(m.event.type) async for m in watch]
        finally:
            watch.cancel()
    assert types[-1] == "EVENT_TYPE_EXECUTION_SUCCEEDED", (kind, types)
    return executed.execution_id


async def test_every_structure_type_runs_end_to_end_and_is_stored_as_a_tree(
    client: Client,
) -> None:
    executions = {kind: await run_request(client, kind) for kind in TYPES}

    async with (
        grpc.aio.insecure_channel(client.mesh.orchestrator.address) as orchestrator,
        grpc.aio.insecure_channel(client.mesh.granulators[0].address) as channel,
    ):
        granulator = granulator_pb2_grpc.GranulatorServiceStub(channel)
        for kind, execution_id in executions.items():
            execution = (
                await orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).GetExecution(
                    orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                    metadata=client.key,
                    timeout=10,
                )
            ).execution
            structure = await granulator.GetStructure(
                granulator_pb2.GetStructureRequest(job_id=execution.job_id),
                metadata=client.key,
                timeout=10,
            )
            kinds = [e.kind for e in structure.elements]
            assert kinds[0] == kind and set(TYPES[kind]) <= set(kinds), (kind, set(kinds))
            assert structure.structure_type == structure_type(kind)
            ids = {e.element_id for e in structure.elements}
            assert all(e.parent_id in ids for e in structure.elements[1:])
            assert structure.document["title"]

            job = (
                await granulator.GetJob(
                    granulator_pb2.GetJobRequest(job_id=execution.job_id),
                    metadata=client.key,
                    timeout=10,
                )
            ).job
            assert job.status == granulator_pb2.JOB_STATUS_COMPLETED
            assert job.execution_id == execution_id and job.action == "generate"
            assert job.quality.score >= 80 and job.element_count == len(kinds)
            assert [v.validator for v in job.validations] == ["rules"]
            assert job.usage.provider == "offline" and job.usage.cost_usd == 0

        quizzes = await granulator.ListJobs(
            granulator_pb2.ListJobsRequest(structure_type=common_pb2.STRUCTURE_TYPE_QUIZ),
            metadata=client.key,
            timeout=10,
        )
        assert [j.spec.topic for j in quizzes.jobs] == ["Rust quiz"]
        assert not quizzes.jobs[0].validations  # lists leave the history out
        by_execution = await granulator.ListJobs(
            granulator_pb2.ListJobsRequest(execution_id=executions["novel"]),
            metadata=client.key,
            timeout=10,
        )
        assert [j.template_name for j in by_execution.jobs] == ["novel_standard"]
        first = await granulator.ListJobs(
            granulator_pb2.ListJobsRequest(page_size=4, status=granulator_pb2.JOB_STATUS_COMPLETED),
            metadata=client.key,
            timeout=10,
        )
        rest = await granulator.ListJobs(
            granulator_pb2.ListJobsRequest(
                page_size=4,
                page_token=first.next_page_token,
                status=granulator_pb2.JOB_STATUS_COMPLETED,
            ),
            metadata=client.key,
            timeout=10,
        )
        assert len(first.jobs) == 4 and len(rest.jobs) == 2 and not rest.next_page_token
        newest_first = [j.create_time.ToDatetime() for j in [*first.jobs, *rest.jobs]]
        assert newest_first == sorted(newest_first, reverse=True)

        other = await make_client(client.mesh)
        mine = await granulator.ListJobs(
            granulator_pb2.ListJobsRequest(), metadata=other.key, timeout=10
        )
        assert not mine.jobs
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.GetJob(
                granulator_pb2.GetJobRequest(job_id=quizzes.jobs[0].job_id),
                metadata=other.key,
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def field_violations(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            fields |= {v.field for v in request.field_violations}
    return fields


async def test_templates_are_seeded_matched_created_and_updated(client: Client) -> None:
    async with grpc.aio.insecure_channel(client.mesh.granulators[0].address) as channel:
        granulator = granulator_pb2_grpc.GranulatorServiceStub(channel)
        listed = await granulator.ListTemplates(
            granulator_pb2.ListTemplatesRequest(), metadata=client.key, timeout=10
        )
        assert [t.name for t in listed.templates] == sorted(t.name for t in SEED_TEMPLATES)
        assert all(t.version == 1 and t.update_time.seconds for t in listed.templates)

        for query, name, match in (
            ("course_standard", "course_standard", "exact"),
            ("Learning Path", "learning_path_standard", "structure_type"),
            ("knowledge", "knowledge_map_standard", "partial"),
        ):
            found = await granulator.GetTemplate(
                granulator_pb2.GetTemplateRequest(query=query), metadata=client.key, timeout=10
            )
            assert (found.template.name, found.match) == (name, match)
        for query, code in (("", "INVALID_ARGUMENT"), ("sonnet", "NOT_FOUND")):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await granulator.GetTemplate(
                    granulator_pb2.GetTemplateRequest(query=query), metadata=client.key, timeout=10
                )
            assert raised.value.code().name == code

        seed = next(t for t in SEED_TEMPLATES if t.name == "quiz_standard")
        new = template_to_proto(seed)
        new.name, new.description = "quiz_short", "Short quizzes."
        new.ClearField("rules")  # empty rules: inherits the quiz seed's rules
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.CreateTemplate(
                granulator_pb2.CreateTemplateRequest(template=new), metadata=client.key, timeout=10
            )
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        created = await granulator.CreateTemplate(
            granulator_pb2.CreateTemplateRequest(template=new), metadata=client.admin, timeout=10
        )
        assert created.template.version == 1
        assert created.template.rules == template_to_proto(seed).rules
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.CreateTemplate(
                granulator_pb2.CreateTemplateRequest(template=new),
                metadata=client.admin,
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS

        bad = granulator_pb2.StructureTemplate(name="Bad Name", prompt_template=" ")
        bad.json_schema.update({"type": "nope"})
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.CreateTemplate(
                granulator_pb2.CreateTemplateRequest(template=bad),
                metadata=client.admin,
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(raised.value) == {
            "template.name",
            "template.structure_type",
            "template.prompt_template",
            "template.json_schema",
        }

        updated = await granulator.UpdateTemplate(
            granulator_pb2.UpdateTemplateRequest(
                template=granulator_pb2.StructureTemplate(
                    name="quiz_short", description="Very short quizzes."
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=client.admin,
            timeout=10,
        )
        assert updated.template.version == 2
        assert updated.template.description == "Very short quizzes."
        assert updated.template.prompt_template == seed.prompt_template
        fetched = await granulator.GetTemplate(
            granulator_pb2.GetTemplateRequest(query="quiz_short"), metadata=client.key, timeout=10
        )
        assert fetched.template == updated.template

        for request, code in (
            (
                granulator_pb2.UpdateTemplateRequest(
                    template=granulator_pb2.StructureTemplate(name="quiz_short"),
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                granulator_pb2.UpdateTemplateRequest(
                    template=granulator_pb2.StructureTemplate(name="nope", description="x")
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                granulator_pb2.UpdateTemplateRequest(
                    template=granulator_pb2.StructureTemplate(
                        name="quiz_short", prompt_template="x"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["prompt_template"]),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,  # a prompt without {topic}
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await granulator.UpdateTemplate(request, metadata=client.admin, timeout=10)
            assert raised.value.code() == code


async def test_two_stage_pipeline_validates_the_generated_job(client: Client) -> None:
    """generate → validate through KAM and the orchestrator: the validate stage reads the
    generate stage's job and records its validation there."""
    from bitware.kam.v1 import templates_pb2, templates_pb2_grpc

    mesh = client.mesh
    stages = [
        templates_pb2.StageDefinition(
            order=1,
            name="generate",
            capability="granulate",
            action="generate",
            structure_template="course",
            min_quality_score=60,
        ),
        templates_pb2.StageDefinition(
            order=2,
            name="validate",
            capability="validate",
            action="validate",
            structure_template="course",
            params={"judge_level": "1"},  # no model configured: the rules alone score
            min_quality_score=60,
            review_again_below_quality=True,  # KAM refuses a silent re-review gate
        ),
    ]
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
        grpc.aio.insecure_channel(mesh.granulators[0].address) as channel,
    ):
        await templates_pb2_grpc.TemplateServiceStub(kam).CreateMasterTemplate(
            templates_pb2.CreateMasterTemplateRequest(
                template=templates_pb2.MasterTemplate(
                    name="course_checked",
                    description="Generate a course, then validate it.",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    stages=stages,
                    cost_estimate_usd=0.05,
                )
            ),
            metadata=client.admin,
            timeout=10,
        )
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(
                    topic="Databases",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    audience="students",
                    granularity=3,
                ),
                master_template="course_checked",
            ),
            metadata=client.key,
            timeout=10,
        )
        executed = await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
            metadata=client.key,
            timeout=10,
        )
        service = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        watch = service.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=executed.execution_id),
            metadata=client.key,
            timeout=30,
        )
        try:
            types = [orchestrator_pb2.EventType.Name(m.event.type) async for m in watch]
        finally:
            watch.cancel()
        assert types[-1] == "EVENT_TYPE_EXECUTION_SUCCEEDED", types
        execution = (
            await service.GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=executed.execution_id),
                metadata=client.key,
                timeout=10,
            )
        ).execution
        generate, validate = execution.stages
        assert validate.quality.score == generate.quality.score >= 80
        job = (
            await granulator_pb2_grpc.GranulatorServiceStub(channel).GetJob(
                granulator_pb2.GetJobRequest(job_id=execution.job_id),
                metadata=client.key,
                timeout=10,
            )
        ).job
        assert job.action == "generate" and job.stage_id == generate.stage_id
        assert [v.validator for v in job.validations] == ["rules", "rules"]
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # a validation stores no tree
            await granulator_pb2_grpc.GranulatorServiceStub(channel).GetStructure(
                granulator_pb2.GetStructureRequest(job_id=validate.output["validation_job_id"]),
                metadata=client.key,
                timeout=10,
            )
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert job.job_id in (raised.value.details() or "")


async def test_a_serving_granulator_ends_the_running_jobs_of_a_lost_one(tmp_path: Path) -> None:
    server = GranulatorServer(
        Settings(
            storage=StorageSettings(data_dir=tmp_path), auth=AuthSettings(worker_id="granulator-1")
        )
    )
    server.job_touch_seconds, server.job_stale_seconds = 0.1, 60.0
    await server.start()
    try:
        for worker_id in ("granulator-gone", "granulator-1"):
            server.db.run_tx_sync(
                lambda tx, w=worker_id: jobs.start(
                    tx,
                    client_id="client-1",
                    execution_id="ex1",
                    stage_id=w,
                    attempt=1,
                    action="generate",
                    spec={"topic": "Lost", "granularity": 2},
                    structure_type="course",
                    template_name="course_standard",
                    worker_id=w,
                )
            )
        # Neither was marked alive for long: the other granulator's is lost, this one's is not
        # (tending marks it alive first).
        server.db.run_tx_sync(lambda tx: tx.execute("UPDATE jobs SET updated_at = '2020-01-01'"))

        def status(stage_id: str) -> str:
            job = server.db.run_tx_sync(lambda tx: jobs.find(tx, "ex1", stage_id, 1))
            assert job is not None
            return job.status

        await eventually(lambda: status("granulator-gone") == "failed")
        assert status("granulator-1") == "running"
    finally:
        await server.stop(0.5)
