"""KAM's one long-lived channel to the orchestrator, used to start, retry and cancel
executions."""

from __future__ import annotations

import grpc

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core import convert
from bitware_core.channels import open_channel, service_metadata
from bitware_core.config import Settings
from bitware_core.context import timeout
from bitware_core.errors import Unavailable
from bitware_core.tiers import TIER_LIMITS
from kam_server import models
from kam_server.errors import OrchestratorRefused
from kam_server.requests import URGENCY_PRIORITY


class OrchestratorClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None
        self._stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub | None = None

    def connect(self, address: str) -> None:
        """Points the client at the orchestrator (it may start after KAM)."""
        self._channel = open_channel(address, self.settings)
        self._stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel)

    def _require(self) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        if self._stub is None:
            raise Unavailable("KAM has no orchestrator address configured")
        return self._stub

    async def execute(self, row: models.ClientRequest, tier: str) -> str:
        """Starts the request's execution; the orchestrator caps the client's running
        executions at its tier's limit."""
        request = orchestrator_pb2.ExecutePipelineRequest(
            template_name=row.master_template,
            template_version=row.template_version,
            spec=convert.spec_to_proto(row.spec),
            priority=convert.enum_value(
                common_pb2.Priority, URGENCY_PRIORITY[row.urgency], "PRIORITY_"
            ),
            request_id=row.id,
            client_id=row.client_id,
            idempotency_key=f"request:{row.id}",
            client_concurrency_limit=TIER_LIMITS[tier].max_concurrent_executions,
        )
        try:
            response = await self._require().ExecutePipeline(
                request,
                timeout=timeout(self.settings.peers.rpc_timeout),
                metadata=service_metadata(self.settings),
                wait_for_ready=True,  # a peer still starting is waited for, within the deadline
            )
        except grpc.aio.AioRpcError as error:
            raise _refused("execution", error) from error
        return response.execution.execution_id

    async def retry(self, execution_id: str, retry_number: int) -> None:
        """Re-runs the failed execution from its failed stage, as its `retry_number`th retry
        (so that asking twice retries once)."""
        try:
            await self._require().RetryExecution(
                orchestrator_pb2.RetryExecutionRequest(
                    execution_id=execution_id, retry_number=retry_number
                ),
                timeout=timeout(self.settings.peers.rpc_timeout),
                metadata=service_metadata(self.settings),
                wait_for_ready=True,  # a peer still starting is waited for, within the deadline
            )
        except grpc.aio.AioRpcError as error:
            raise _refused("retry", error) from error

    async def cancel(self, execution_id: str) -> None:
        try:
            await self._require().CancelExecution(
                orchestrator_pb2.CancelExecutionRequest(
                    execution_id=execution_id, reason="request cancelled"
                ),
                timeout=timeout(self.settings.peers.rpc_timeout),
                metadata=service_metadata(self.settings),
                wait_for_ready=True,  # a peer still starting is waited for, within the deadline
            )
        except grpc.aio.AioRpcError as error:
            # FAILED_PRECONDITION: it has finished already; NOT_FOUND: it never started.
            if error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return
            raise Unavailable(
                f"the orchestrator could not cancel the execution: {error.details()}"
            ) from error

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def _refused(what: str, error: grpc.aio.AioRpcError) -> Unavailable | OrchestratorRefused:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"orchestrator unreachable: {error.details()}")
    return OrchestratorRefused(
        error.code().name, f"the orchestrator refused the {what}: {error.details()}"
    )
