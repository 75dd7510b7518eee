"""The granulator's own API: jobs, stored element trees and structure templates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware_core import convert
from bitware_core.auth import current_principal
from bitware_core.db import Database
from bitware_core.domain import Quality, Usage
from bitware_core.errors import FieldViolation, InvalidArgument
from bitware_core.server import Context
from granulator_server import calls, jobs, models, template_store
from granulator_server.domain import StructureTemplate


def _type(name: str) -> Any:
    return convert.enum_value(common_pb2.StructureType, name, "STRUCTURE_TYPE_")


def template_to_proto(
    template: StructureTemplate, updated_at: datetime | None = None
) -> granulator_pb2.StructureTemplate:
    return granulator_pb2.StructureTemplate(
        name=template.name,
        structure_type=_type(template.structure_type),
        description=template.description,
        json_schema=convert.to_struct(template.json_schema),
        prompt_template=template.prompt_template,
        rules=convert.to_struct(template_store.rules_to_dict(template.rules)),
        defaults={k: str(v) for k, v in template.defaults.items()},
        version=template.version,
        update_time=convert.timestamp(updated_at),
    )


def template_from_proto(message: granulator_pb2.StructureTemplate) -> StructureTemplate:
    """The domain template of a request; field problems are raised as INVALID_ARGUMENT."""
    structure_type = convert.checked_enum(
        common_pb2.StructureType,
        message.structure_type,
        "STRUCTURE_TYPE_",
        "template.structure_type",
    )
    try:
        rules = template_store.rules_from_dict(convert.from_struct(message.rules))
    except ValueError as error:
        raise InvalidArgument([FieldViolation("template.rules", str(error))]) from None
    return StructureTemplate(
        name=message.name.strip(),
        structure_type=structure_type,
        description=message.description,
        json_schema=convert.from_struct(message.json_schema),
        prompt_template=message.prompt_template,
        rules=rules,
        defaults=dict(message.defaults),
    )


def job_to_proto(job: models.Job, with_history: bool = True) -> granulator_pb2.Job:
    message = granulator_pb2.Job(
        job_id=job.id,
        client_id=job.client_id,
        execution_id=job.execution_id,
        stage_id=job.stage_id,
        attempt=job.attempt,
        spec=convert.spec_to_proto(job.spec),
        template_name=job.template_name,
        status=convert.enum_value(granulator_pb2.JobStatus, job.status, "JOB_STATUS_"),
        quality=Quality.from_json(job.quality).to_proto(),
        usage=Usage.from_json(job.usage).to_proto(),
        element_count=job.element_count,
        error_message=job.error_message,
        create_time=convert.timestamp(job.created_at),
        update_time=convert.timestamp(job.updated_at),
        action=job.action,
    )
    if with_history:
        for record in job.validations:
            entry = message.validations.add(
                validator=record["validator"],
                quality=Quality.from_json(record["quality"]).to_proto(),
            )
            entry.time.FromJsonString(record["time"] + "Z")
    return message


def call_to_proto(call: models.ModelCall, job: models.Job) -> granulator_pb2.ModelCall:
    message = granulator_pb2.ModelCall(
        job_id=job.id,
        stage_id=job.stage_id,
        attempt=job.attempt,
        sequence=call.sequence,
        start_time=convert.timestamp(call.started_at),
        endpoint=call.endpoint,
        model=call.model,
        format_mode=call.format_mode,
        why=call.why,
        parameters=convert.to_struct(call.parameters),
        response_format=call.response_format,
        messages=[granulator_pb2.ChatMessage(**m) for m in call.messages],
        reply=call.reply,
        finish_reason=call.finish_reason,
        error=call.error,
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        tokens_estimated=call.tokens_estimated,
        cost_usd=call.cost_usd,
        truncated=call.truncated,
    )
    message.latency.FromMilliseconds(call.latency_ms)
    return message


class GranulatorHandlers(granulator_pb2_grpc.GranulatorServiceServicer):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def GetJob(
        self, request: granulator_pb2.GetJobRequest, context: Context
    ) -> granulator_pb2.GetJobResponse:
        principal = current_principal()
        job = await self.db.run(lambda s: jobs.get(s, principal, request.job_id))
        return granulator_pb2.GetJobResponse(job=job_to_proto(job))

    async def ListJobs(
        self, request: granulator_pb2.ListJobsRequest, context: Context
    ) -> granulator_pb2.ListJobsResponse:
        principal = current_principal()
        status = convert.checked_enum(
            granulator_pb2.JobStatus, request.status, "JOB_STATUS_", "status"
        )
        structure_type = convert.checked_enum(
            common_pb2.StructureType, request.structure_type, "STRUCTURE_TYPE_", "structure_type"
        )
        rows, token = await self.db.run(
            lambda s: jobs.list_jobs(
                s,
                principal,
                page_size=request.page_size,
                page_token=request.page_token,
                status=status,
                structure_type=structure_type,
                execution_id=request.execution_id,
            )
        )
        return granulator_pb2.ListJobsResponse(
            jobs=[job_to_proto(r, with_history=False) for r in rows], next_page_token=token
        )

    async def GetStructure(
        self, request: granulator_pb2.GetStructureRequest, context: Context
    ) -> granulator_pb2.GetStructureResponse:
        principal = current_principal()
        job, elements = await self.db.run(lambda s: jobs.structure(s, principal, request.job_id))
        ids = {e.position: f"{job.id}.{e.position}" for e in elements}
        return granulator_pb2.GetStructureResponse(
            job_id=job.id,
            structure_type=_type(job.structure_type),
            elements=[
                common_pb2.Element(
                    element_id=ids[e.position],
                    parent_id=ids.get(e.parent_position, ""),
                    kind=e.kind,
                    order=e.order,
                    title=e.title,
                    payload=convert.to_struct(e.payload),
                )
                for e in elements
            ],
            document=convert.to_struct(job.document),
        )

    async def ListModelCalls(
        self, request: granulator_pb2.ListModelCallsRequest, context: Context
    ) -> granulator_pb2.ListModelCallsResponse:
        principal = current_principal()
        if bool(request.job_id) == bool(request.execution_id):
            raise InvalidArgument(
                [FieldViolation("job_id", "give exactly one of job_id and execution_id")]
            )
        rows, token = await self.db.run(
            lambda s: calls.list_calls(
                s,
                principal,
                job_id=request.job_id,
                execution_id=request.execution_id,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return granulator_pb2.ListModelCallsResponse(
            calls=[call_to_proto(call, job) for call, job in rows], next_page_token=token
        )

    async def ListTemplates(
        self, request: granulator_pb2.ListTemplatesRequest, context: Context
    ) -> granulator_pb2.ListTemplatesResponse:
        wanted = convert.checked_enum(
            common_pb2.StructureType, request.structure_type, "STRUCTURE_TYPE_", "structure_type"
        )
        page, token = await self.db.run(
            lambda s: template_store.list_templates(
                s, request.page_size, request.page_token, wanted
            )
        )
        return granulator_pb2.ListTemplatesResponse(
            templates=[template_to_proto(t, at) for t, at in page], next_page_token=token
        )

    async def GetTemplate(
        self, request: granulator_pb2.GetTemplateRequest, context: Context
    ) -> granulator_pb2.GetTemplateResponse:
        query = request.query.strip()
        if not query:
            raise InvalidArgument([FieldViolation("query", "is required")])
        template, updated_at, match = await self.db.run(lambda s: template_store.find(s, query))
        return granulator_pb2.GetTemplateResponse(
            template=template_to_proto(template, updated_at), match=match
        )

    async def CreateTemplate(
        self, request: granulator_pb2.CreateTemplateRequest, context: Context
    ) -> granulator_pb2.CreateTemplateResponse:
        template = template_from_proto(request.template)
        stored, updated_at = await self.db.run(lambda s: template_store.create(s, template))
        return granulator_pb2.CreateTemplateResponse(template=template_to_proto(stored, updated_at))

    async def UpdateTemplate(
        self, request: granulator_pb2.UpdateTemplateRequest, context: Context
    ) -> granulator_pb2.UpdateTemplateResponse:
        changes = template_from_proto(
            granulator_pb2.StructureTemplate(
                name=request.template.name,
                structure_type=request.template.structure_type,
                description=request.template.description,
                json_schema=request.template.json_schema,
                prompt_template=request.template.prompt_template,
                rules=request.template.rules,
                defaults=request.template.defaults,
            )
        )
        mask = list(request.update_mask.paths)
        stored, updated_at = await self.db.run(lambda s: template_store.update(s, changes, mask))
        return granulator_pb2.UpdateTemplateResponse(template=template_to_proto(stored, updated_at))
