"""The orchestrator's one channel to KAM: who callers are, pinned master templates (cached), and
execution outcomes (which settle the client's budget)."""

from __future__ import annotations

import grpc

from bitware.kam.v1 import (
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from bitware_core import convert
from bitware_core.channels import service_metadata
from bitware_core.config import Settings
from bitware_core.context import timeout
from bitware_core.domain import PipelineTemplate, Usage
from bitware_core.errors import Unavailable
from bitware_core.kam import KamConnection
from orchestrator_server import models
from orchestrator_server.errors import TemplateNotFound


class KamClient(KamConnection):
    """Adds what the orchestrator asks of KAM: pinned templates and execution outcomes."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.templates = templates_pb2_grpc.TemplateServiceStub(self.channel)
        self.requests = requests_pb2_grpc.RequestServiceStub(self.channel)
        self._templates: dict[tuple[str, int], PipelineTemplate] = {}

    async def template(self, name: str, version: int) -> PipelineTemplate:
        """The template version, pinned: a cached copy when KAM is unreachable; never a guess."""
        cached = self._templates.get((name, version))
        if cached is not None and version:
            return cached
        try:
            response = await self.templates.GetMasterTemplate(
                templates_pb2.GetMasterTemplateRequest(name=name, version=version),
                timeout=timeout(self.settings.peers.rpc_timeout),
                metadata=service_metadata(self.settings),
                wait_for_ready=True,  # a peer still starting is waited for, within the deadline
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise TemplateNotFound(name, version or None, error.details() or "") from error
            if cached is not None:
                return cached
            raise Unavailable(f"KAM is unreachable and template {name!r} is not cached") from error
        template = PipelineTemplate.from_proto(response.template)
        self._templates[(name, version)] = self._templates[(name, template.version)] = template
        return template

    async def report_outcome(self, execution: models.Execution) -> None:
        status = {"succeeded": "completed", "failed": "failed", "cancelled": "cancelled"}
        await self.requests.RecordExecutionOutcome(
            requests_pb2.RecordExecutionOutcomeRequest(
                request_id=execution.request_id,
                execution_id=execution.id,
                status=convert.enum_value(
                    requests_pb2.RequestStatus, status[execution.status], "REQUEST_STATUS_"
                ),
                usage=Usage.from_json(execution.usage).to_proto(),
                job_id=execution.job_id,
                error_message=str(execution.error.get("message", "")),
                retries=execution.retries,
            ),
            timeout=timeout(self.settings.peers.rpc_timeout),
            metadata=service_metadata(self.settings),
            wait_for_ready=True,  # a peer still starting is waited for, within the deadline
        )
