"""RequestService: client requests, their execution on the orchestrator, and outcomes."""

from __future__ import annotations

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware_core import convert
from bitware_core.auth import current_principal
from bitware_core.db import Database
from bitware_core.domain import RequestStatus, Usage
from bitware_core.errors import Violations
from bitware_core.server import Context
from kam_server import messages, requests
from kam_server.orchestrator_client import OrchestratorClient
from kam_server.services import Handlers


class RequestHandlers(Handlers, requests_pb2_grpc.RequestServiceServicer):
    def __init__(self, db: Database, orchestrator: OrchestratorClient) -> None:
        super().__init__(db)
        self.orchestrator = orchestrator

    async def CreateRequest(
        self, request: requests_pb2.CreateRequestRequest, context: Context
    ) -> requests_pb2.CreateRequestResponse:
        actor = current_principal()
        spec = request.spec
        new = requests.NewRequest(
            topic=spec.topic,
            structure_type=convert.checked_enum(
                common_pb2.StructureType,
                spec.structure_type,
                "STRUCTURE_TYPE_",
                "spec.structure_type",
            ),
            audience=spec.audience,
            granularity=spec.granularity or 3,
            constraints=dict(spec.constraints),
            options=dict(spec.options),
            master_template=request.master_template,
            urgency=convert.checked_enum(
                requests_pb2.Urgency, request.urgency, "URGENCY_", "urgency"
            )
            or "normal",
            idempotency_key=request.idempotency_key,
            client_id=request.client_id,
        )
        row = await self.db.run_tx(lambda tx: requests.create(tx, actor, new))
        return requests_pb2.CreateRequestResponse(request=messages.request_to_proto(row))

    async def GetRequest(
        self, request: requests_pb2.GetRequestRequest, context: Context
    ) -> requests_pb2.GetRequestResponse:
        actor = current_principal()
        row = await self.db.run(lambda s: requests.get(s, actor, request.request_id))
        return requests_pb2.GetRequestResponse(request=messages.request_to_proto(row))

    async def ListRequests(
        self, request: requests_pb2.ListRequestsRequest, context: Context
    ) -> requests_pb2.ListRequestsResponse:
        actor = current_principal()
        where = requests.RequestFilter(
            status=convert.checked_enum(
                requests_pb2.RequestStatus, request.status, "REQUEST_STATUS_", "status"
            ),
            client_id=request.client_id,
            structure_type=convert.checked_enum(
                common_pb2.StructureType,
                request.structure_type,
                "STRUCTURE_TYPE_",
                "structure_type",
            ),
            master_template=request.master_template,
        )
        rows, token = await self.db.run(
            lambda s: requests.list_requests(s, actor, request.page_size, request.page_token, where)
        )
        return requests_pb2.ListRequestsResponse(
            requests=[messages.request_to_proto(r) for r in rows], next_page_token=token
        )

    async def ExecuteRequest(
        self, request: requests_pb2.ExecuteRequestRequest, context: Context
    ) -> requests_pb2.ExecuteRequestResponse:
        actor = current_principal()
        row = await requests.execute(self.db, self.orchestrator, actor, request.request_id)
        return requests_pb2.ExecuteRequestResponse(
            request=messages.request_to_proto(row), execution_id=row.execution_id
        )

    async def RetryRequest(
        self, request: requests_pb2.RetryRequestRequest, context: Context
    ) -> requests_pb2.RetryRequestResponse:
        actor = current_principal()
        row = await requests.retry(self.db, self.orchestrator, actor, request.request_id)
        return requests_pb2.RetryRequestResponse(
            request=messages.request_to_proto(row), execution_id=row.execution_id
        )

    async def CancelRequest(
        self, request: requests_pb2.CancelRequestRequest, context: Context
    ) -> requests_pb2.CancelRequestResponse:
        actor = current_principal()
        row = await requests.cancel(self.db, self.orchestrator, actor, request.request_id)
        return requests_pb2.CancelRequestResponse(request=messages.request_to_proto(row))

    async def RecordExecutionOutcome(
        self, request: requests_pb2.RecordExecutionOutcomeRequest, context: Context
    ) -> requests_pb2.RecordExecutionOutcomeResponse:
        status = convert.checked_enum(
            requests_pb2.RequestStatus, request.status, "REQUEST_STATUS_", "status"
        )
        problems = Violations()
        problems.check(
            status in requests.TERMINAL, "status", "must be completed, failed or cancelled"
        )
        problems.check(request.usage.cost_usd >= 0, "usage.cost_usd", "must not be negative")
        problems.raise_if_any()
        row = await self.db.run_tx(
            lambda tx: requests.record_outcome(
                tx,
                request.request_id,
                request.execution_id,
                status=RequestStatus(status),
                usage=Usage.from_proto(request.usage),
                job_id=request.job_id,
                error_message=request.error_message,
                retries=request.retries,
            )
        )
        return requests_pb2.RecordExecutionOutcomeResponse(request=messages.request_to_proto(row))
