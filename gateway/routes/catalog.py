"""Master templates (KAM), structure templates and jobs with their structure trees (granulator)."""

from __future__ import annotations

import json
import re
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2
from bitware.kam.v1 import templates_pb2
from gateway.calls import CallDep, enum_value, message_json, reply
from gateway.models import Int32, JobStatus, StructureType
from gateway.schemas import returns

router = APIRouter(prefix="/api", tags=["templates and jobs"])

PageSize = Annotated[Int32, Query(description="At most this many (default 50).")]
PageToken = Annotated[str, Query(description="The previous page's next_page_token.")]


@router.get(
    "/master-templates",
    responses=returns(templates_pb2.ListMasterTemplatesResponse, "The latest of each"),
)
async def list_master_templates(
    call: CallDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    include_deprecated: bool = False,
) -> JSONResponse:
    """Lists the latest version of each master template, by name."""
    message = templates_pb2.ListMasterTemplatesRequest(
        page_size=page_size, page_token=page_token, include_deprecated=include_deprecated
    )
    return reply(await call(call.up.templates.ListMasterTemplates, message))


@router.get(
    "/master-templates/{name}",
    responses=returns(templates_pb2.GetMasterTemplateResponse, "The template version"),
)
async def get_master_template(
    name: str,
    call: CallDep,
    version: Annotated[Int32, Query(description="0 means the latest.")] = 0,
) -> JSONResponse:
    """Returns a master template, the latest version unless `version` is given."""
    message = templates_pb2.GetMasterTemplateRequest(name=name, version=version)
    return reply(await call(call.up.templates.GetMasterTemplate, message))


@router.get(
    "/structure-templates",
    responses=returns(granulator_pb2.ListTemplatesResponse, "Templates by name"),
)
async def list_structure_templates(
    call: CallDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    structure_type: StructureType | None = None,
) -> JSONResponse:
    """Lists the granulator's structure templates."""
    message = granulator_pb2.ListTemplatesRequest(
        page_size=page_size,
        page_token=page_token,
        structure_type=enum_value(common_pb2.StructureType, "STRUCTURE_TYPE_", structure_type),
    )
    return reply(await call.granulator(lambda g: g.ListTemplates, message))


@router.get(
    "/structure-templates/{query}",
    responses=returns(granulator_pb2.GetTemplateResponse, "The best match"),
)
async def get_structure_template(query: str, call: CallDep) -> JSONResponse:
    """Finds a structure template: exact name, then structure type, then part of a name."""
    message = granulator_pb2.GetTemplateRequest(query=query)
    return reply(await call.granulator(lambda g: g.GetTemplate, message))


@router.get("/jobs", responses=returns(granulator_pb2.ListJobsResponse, "A page of jobs"))
async def list_jobs(
    call: CallDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    status: JobStatus | None = None,
    structure_type: StructureType | None = None,
    execution_id: Annotated[str, Query(description="Only this execution's jobs.")] = "",
) -> JSONResponse:
    """Lists jobs, newest first."""
    message = granulator_pb2.ListJobsRequest(
        page_size=page_size,
        page_token=page_token,
        status=enum_value(granulator_pb2.JobStatus, "JOB_STATUS_", status),
        structure_type=enum_value(common_pb2.StructureType, "STRUCTURE_TYPE_", structure_type),
        execution_id=execution_id,
    )
    return reply(await call.granulator(lambda g: g.ListJobs, message))


@router.get("/jobs/{job_id}", responses=returns(granulator_pb2.GetJobResponse, "The job"))
async def get_job(job_id: str, call: CallDep) -> JSONResponse:
    """Returns a job with its quality and validation history."""
    return reply(
        await call.granulator(lambda g: g.GetJob, granulator_pb2.GetJobRequest(job_id=job_id))
    )


@router.get(
    "/jobs/{job_id}/calls",
    responses=returns(granulator_pb2.ListModelCallsResponse, "The job's model calls, in order"),
)
async def list_job_calls(
    job_id: str, call: CallDep, page_size: PageSize = 0, page_token: PageToken = ""
) -> JSONResponse:
    """Lists the model calls a job made: request, reply or error, latency, tokens, cost and why
    each was made (texts cut to 16,000 characters; never a key or header)."""
    message = granulator_pb2.ListModelCallsRequest(
        job_id=job_id, page_size=page_size, page_token=page_token
    )
    return reply(await call.granulator(lambda g: g.ListModelCalls, message))


def _filename(job_id: str) -> str:
    # The id comes from the caller's URL; keep the header value plain.
    return f"structure-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)[:80]}.json"


@router.get(
    "/jobs/{job_id}/structure",
    responses=returns(granulator_pb2.GetStructureResponse, "The element tree and document"),
)
async def get_structure(
    job_id: str,
    call: CallDep,
    download: Annotated[bool, Query(description="Answer as a JSON file attachment.")] = False,
) -> Response:
    """Returns a job's stored element tree (pre-order) and the structure as one document."""
    answer = await call.granulator(
        lambda g: g.GetStructure, granulator_pb2.GetStructureRequest(job_id=job_id)
    )
    if not download:
        return reply(answer)
    # Indented for people who open the file; same content as without `download`.
    return Response(
        json.dumps(message_json(answer), indent=2, ensure_ascii=False) + "\n",
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{_filename(job_id)}"'},
    )
