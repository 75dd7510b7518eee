"""KAM's gRPC handlers: thin translations between protobuf and the logic modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from sqlalchemy.orm import Session

from bitware_core import convert
from bitware_core.auth import Credentials, current_principal
from bitware_core.context import timeout
from bitware_core.db import Database
from bitware_core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from kam_server import catalog, identity, models, requests
from kam_server.orchestrator_client import OrchestratorClient

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


def _duration(seconds: float) -> Any:
    from google.protobuf import duration_pb2

    value = duration_pb2.Duration()
    value.FromMilliseconds(int(seconds * 1000))
    return value


class _Handlers:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def run(self, work: Callable[[Session], T]) -> T:
        return await self.db.run(work)


def client_to_proto(row: models.Client) -> accounts_pb2.Client:
    return accounts_pb2.Client(
        client_id=row.id,
        company_name=row.company_name,
        contact_email=row.contact_email,
        tier=convert.enum_value(common_pb2.Tier, row.tier, "TIER_"),
        monthly_budget_usd=row.monthly_budget_usd,
        status=convert.enum_value(accounts_pb2.ClientStatus, row.status, "CLIENT_STATUS_"),
        industry=row.industry,
        company_size=row.company_size,
        create_time=convert.timestamp(row.created_at),
    )


def api_key_to_proto(row: models.ApiKey) -> accounts_pb2.ApiKey:
    return accounts_pb2.ApiKey(
        api_key_id=row.id,
        client_id=row.client_id,
        name=row.name,
        prefix=row.prefix,
        create_time=convert.timestamp(row.created_at),
        last_used_time=convert.timestamp(row.last_used_at),
        revoked=row.revoked,
    )


def template_to_proto(row: models.MasterTemplate) -> templates_pb2.MasterTemplate:
    stages = [
        templates_pb2.StageDefinition(
            order=stage["order"],
            name=stage["name"],
            capability=stage["capability"],
            action=stage["action"],
            structure_template=stage.get("structure_template", ""),
            params=stage.get("params", {}),
            timeout=_duration(stage.get("timeout_s", 120.0)),
            retry_policy=templates_pb2.RetryPolicy(
                max_attempts=stage["retry_policy"]["max_attempts"],
                initial_backoff=_duration(stage["retry_policy"]["initial_backoff_s"]),
                max_backoff=_duration(stage["retry_policy"]["max_backoff_s"]),
                backoff_multiplier=stage["retry_policy"]["backoff_multiplier"],
                non_retryable_errors=stage["retry_policy"]["non_retryable_errors"],
            ),
            min_quality_score=stage.get("min_quality_score", 0.0),
        )
        for stage in row.stages
    ]
    return templates_pb2.MasterTemplate(
        name=row.name,
        version=row.version,
        description=row.description,
        structure_type=convert.enum_value(
            common_pb2.StructureType, row.structure_type, "STRUCTURE_TYPE_"
        ),
        stages=stages,
        allowed_tiers=[convert.enum_value(common_pb2.Tier, t, "TIER_") for t in row.allowed_tiers],
        cost_estimate_usd=row.cost_estimate_usd,
        deprecated=row.deprecated,
        create_time=convert.timestamp(row.created_at),
        execution_timeout=_duration(row.execution_timeout_s),
    )


def request_to_proto(row: models.ClientRequest) -> requests_pb2.ClientRequest:
    return requests_pb2.ClientRequest(
        request_id=row.id,
        client_id=row.client_id,
        spec=convert.spec_to_proto(row.spec),
        master_template=row.master_template,
        template_version=row.template_version,
        urgency=convert.enum_value(requests_pb2.Urgency, row.urgency, "URGENCY_"),
        idempotency_key=row.idempotency_key or "",
        status=convert.enum_value(requests_pb2.RequestStatus, row.status, "REQUEST_STATUS_"),
        execution_id=row.execution_id,
        cost_usd=row.cost_usd or row.reserved_usd,
        job_id=row.job_id,
        error_message=row.error_message,
        usage=convert.usage_to_proto(row.usage),
        create_time=convert.timestamp(row.created_at),
        update_time=convert.timestamp(row.updated_at),
    )


class AuthHandlers(_Handlers, auth_pb2_grpc.AuthServiceServicer):
    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        result = await self.run(lambda s: identity.login(s, request.email, request.password))
        return auth_pb2.LoginResponse(
            session_token=result.token,
            expire_time=convert.timestamp(result.expires_at),
            principal=convert.principal_to_proto(result.principal),
        )

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Context
    ) -> auth_pb2.LogoutResponse:
        token = Credentials.from_metadata(tuple(context.invocation_metadata() or ())).session_token
        if not token:
            raise FailedPrecondition("sign out needs the session token you signed in with")
        await self.run(lambda s: identity.logout(s, token))
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: Context
    ) -> auth_pb2.AuthenticateResponse:
        caller = current_principal()
        which = request.WhichOneof("credential")
        if which is None:
            return auth_pb2.AuthenticateResponse(principal=convert.principal_to_proto(caller))
        if caller.kind not in ("service", "worker"):
            raise PermissionDenied(
                "only services and workers may check another caller's credential"
            )
        credentials = Credentials(
            api_key=request.api_key,
            session_token=request.session_token,
            worker_id=request.worker.worker_id,
            worker_token=request.worker.token,
        )
        principal = await self.run(lambda s: identity.authenticate(s, credentials))
        return auth_pb2.AuthenticateResponse(principal=convert.principal_to_proto(principal))


class ClientHandlers(_Handlers, accounts_pb2_grpc.ClientServiceServicer):
    async def CreateClient(
        self, request: accounts_pb2.CreateClientRequest, context: Context
    ) -> accounts_pb2.CreateClientResponse:
        actor = current_principal()
        c = request.client
        tier = convert.checked_enum(common_pb2.Tier, c.tier, "TIER_", "client.tier")
        row = await self.run(
            lambda s: identity.create_client(
                s,
                actor,
                company_name=c.company_name,
                contact_email=c.contact_email,
                tier=tier,
                monthly_budget_usd=c.monthly_budget_usd,
                industry=c.industry,
                company_size=c.company_size,
            )
        )
        return accounts_pb2.CreateClientResponse(client=client_to_proto(row))

    async def GetClient(
        self, request: accounts_pb2.GetClientRequest, context: Context
    ) -> accounts_pb2.GetClientResponse:
        actor = current_principal()
        row = await self.run(lambda s: identity.get_client(s, actor, request.client_id))
        return accounts_pb2.GetClientResponse(client=client_to_proto(row))

    async def ListTiers(
        self, request: accounts_pb2.ListTiersRequest, context: Context
    ) -> accounts_pb2.ListTiersResponse:
        return accounts_pb2.ListTiersResponse(
            tiers=[
                accounts_pb2.TierLimits(
                    tier=convert.enum_value(common_pb2.Tier, name, "TIER_"),
                    max_users=limits.max_users,
                    max_requests_per_month=limits.max_requests_per_month,
                    max_concurrent_executions=limits.max_concurrent_executions,
                    max_priority=convert.enum_value(
                        common_pb2.Priority, limits.max_priority, "PRIORITY_"
                    ),
                )
                for name, limits in identity.TIER_LIMITS.items()
            ]
        )


class ApiKeyHandlers(_Handlers, accounts_pb2_grpc.ApiKeyServiceServicer):
    async def CreateApiKey(
        self, request: accounts_pb2.CreateApiKeyRequest, context: Context
    ) -> accounts_pb2.CreateApiKeyResponse:
        actor = current_principal()
        key, plaintext = await self.run(
            lambda s: identity.create_api_key(s, actor, request.client_id, request.name)
        )
        return accounts_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(key), key=plaintext)

    async def RevokeApiKey(
        self, request: accounts_pb2.RevokeApiKeyRequest, context: Context
    ) -> accounts_pb2.RevokeApiKeyResponse:
        actor = current_principal()
        key = await self.run(lambda s: identity.revoke_api_key(s, actor, request.api_key_id))
        return accounts_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(key))


class WorkerCredentialHandlers(_Handlers, accounts_pb2_grpc.WorkerCredentialServiceServicer):
    async def CreateWorkerCredential(
        self, request: accounts_pb2.CreateWorkerCredentialRequest, context: Context
    ) -> accounts_pb2.CreateWorkerCredentialResponse:
        actor = current_principal()
        kind = (
            convert.checked_enum(common_pb2.PrincipalKind, request.kind, "PRINCIPAL_KIND_", "kind")
            or "worker"
        )
        cred, token = await self.run(
            lambda s: identity.create_worker_credential(s, actor, request.worker_id, kind)
        )
        return accounts_pb2.CreateWorkerCredentialResponse(
            credential=accounts_pb2.WorkerCredentialInfo(
                worker_id=cred.worker_id,
                kind=convert.enum_value(common_pb2.PrincipalKind, cred.kind, "PRINCIPAL_KIND_"),
                create_time=convert.timestamp(cred.created_at),
                rotate_time=convert.timestamp(cred.rotated_at),
            ),
            token=token,
        )


class TemplateHandlers(_Handlers, templates_pb2_grpc.TemplateServiceServicer):
    async def GetMasterTemplate(
        self, request: templates_pb2.GetMasterTemplateRequest, context: Context
    ) -> templates_pb2.GetMasterTemplateResponse:
        if not request.name:
            raise InvalidArgument([FieldViolation("name", "is required")])
        row = await self.run(lambda s: catalog.get(s, request.name, request.version))
        return templates_pb2.GetMasterTemplateResponse(template=template_to_proto(row))

    async def ListMasterTemplates(
        self, request: templates_pb2.ListMasterTemplatesRequest, context: Context
    ) -> templates_pb2.ListMasterTemplatesResponse:
        rows, token = await self.run(
            lambda s: catalog.list_latest(
                s, request.page_size, request.page_token, request.include_deprecated
            )
        )
        return templates_pb2.ListMasterTemplatesResponse(
            templates=[template_to_proto(r) for r in rows], next_page_token=token
        )


class RequestHandlers(_Handlers, requests_pb2_grpc.RequestServiceServicer):
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
        row = await self.run(lambda s: requests.create(s, actor, new))
        return requests_pb2.CreateRequestResponse(request=request_to_proto(row))

    async def GetRequest(
        self, request: requests_pb2.GetRequestRequest, context: Context
    ) -> requests_pb2.GetRequestResponse:
        actor = current_principal()
        row = await self.run(lambda s: requests.get(s, actor, request.request_id))
        return requests_pb2.GetRequestResponse(request=request_to_proto(row))

    async def ListRequests(
        self, request: requests_pb2.ListRequestsRequest, context: Context
    ) -> requests_pb2.ListRequestsResponse:
        actor = current_principal()
        status = convert.checked_enum(
            requests_pb2.RequestStatus, request.status, "REQUEST_STATUS_", "status"
        )
        structure_type = convert.checked_enum(
            common_pb2.StructureType, request.structure_type, "STRUCTURE_TYPE_", "structure_type"
        )
        rows, token = await self.run(
            lambda s: requests.list_requests(
                s,
                actor,
                page_size=request.page_size,
                page_token=request.page_token,
                status=status,
                client_id=request.client_id,
                structure_type=structure_type,
            )
        )
        return requests_pb2.ListRequestsResponse(
            requests=[request_to_proto(r) for r in rows], next_page_token=token
        )

    async def ExecuteRequest(
        self, request: requests_pb2.ExecuteRequestRequest, context: Context
    ) -> requests_pb2.ExecuteRequestResponse:
        actor = current_principal()
        row = await self.run(lambda s: requests.begin_execution(s, actor, request.request_id))
        if not row.execution_id:
            try:
                execution_id = await self.orchestrator.execute(row, timeout(10.0))
            except Unavailable:
                await self.run(lambda s: requests.abandon_execution(s, row.id))
                raise
            row = await self.run(lambda s: requests.attach_execution(s, row.id, execution_id))
        return requests_pb2.ExecuteRequestResponse(
            request=request_to_proto(row), execution_id=row.execution_id
        )

    async def CancelRequest(
        self, request: requests_pb2.CancelRequestRequest, context: Context
    ) -> requests_pb2.CancelRequestResponse:
        actor = current_principal()
        row = await self.run(lambda s: requests.cancel(s, actor, request.request_id))
        if row.execution_id:
            await self.orchestrator.cancel(row.execution_id, timeout(10.0))
        return requests_pb2.CancelRequestResponse(request=request_to_proto(row))

    async def RecordExecutionOutcome(
        self, request: requests_pb2.RecordExecutionOutcomeRequest, context: Context
    ) -> requests_pb2.RecordExecutionOutcomeResponse:
        status = convert.checked_enum(
            requests_pb2.RequestStatus, request.status, "REQUEST_STATUS_", "status"
        )
        if status not in requests.TERMINAL:
            raise InvalidArgument(
                [FieldViolation("status", "must be completed, failed or cancelled")]
            )
        row = await self.run(
            lambda s: requests.record_outcome(
                s,
                request.request_id,
                status=status,
                usage=convert.usage_from_proto(request.usage),
                cost_usd=request.usage.cost_usd,
                job_id=request.job_id,
                error_message=request.error_message,
            )
        )
        return requests_pb2.RecordExecutionOutcomeResponse(request=request_to_proto(row))
