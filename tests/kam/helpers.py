"""Small helpers for KAM tests: stubs on one channel, principals of every kind, and readers of
the rich error details (`ErrorInfo`, `BadRequest`, `RetryInfo`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

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
from bitware_mesh.inprocess import InProcessMesh
from tests.common import PARKED_CAPABILITY, Client

Metadata = tuple[tuple[str, str], ...]
DetailT = TypeVar("DetailT", bound=Message)
PASSWORD = "correct horse battery"


@dataclass
class Kam:
    """Every KAM stub on one channel."""

    channel: grpc.aio.Channel

    def __post_init__(self) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.users = accounts_pb2_grpc.UserServiceStub(self.channel)
        self.clients = accounts_pb2_grpc.ClientServiceStub(self.channel)
        self.keys = accounts_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.workers = accounts_pb2_grpc.WorkerCredentialServiceStub(self.channel)
        self.audit = accounts_pb2_grpc.AuditServiceStub(self.channel)
        self.templates = templates_pb2_grpc.TemplateServiceStub(self.channel)
        self.requests = requests_pb2_grpc.RequestServiceStub(self.channel)

    async def login(self, email: str, password: str = PASSWORD) -> Metadata:
        response = await self.auth.Login(
            auth_pb2.LoginRequest(email=email, password=password), timeout=10
        )
        return (("x-bitware-session-token", response.session_token),)

    async def whoami(self, metadata: Metadata) -> common_pb2.Principal:
        response = await self.auth.Authenticate(
            auth_pb2.AuthenticateRequest(), metadata=metadata, timeout=10
        )
        return response.principal

    async def create_user(
        self,
        admin: Metadata,
        email: str,
        role: int,
        client_id: str = "",
        password: str = PASSWORD,
    ) -> accounts_pb2.User:
        response = await self.users.CreateUser(
            accounts_pb2.CreateUserRequest(
                user=accounts_pb2.User(email=email, role=role, client_id=client_id),
                password=password,
            ),
            metadata=admin,
            timeout=10,
        )
        return response.user

    async def create_request(
        self, metadata: Metadata, template: str = "", **fields: Any
    ) -> requests_pb2.ClientRequest:
        spec = common_pb2.ContentSpec(
            topic=fields.pop("topic", "AI Development"),
            structure_type=fields.pop("structure_type", common_pb2.STRUCTURE_TYPE_COURSE),
            granularity=fields.pop("granularity", 3),
        )
        response = await self.requests.CreateRequest(
            requests_pb2.CreateRequestRequest(spec=spec, master_template=template, **fields),
            metadata=metadata,
            timeout=10,
        )
        return response.request

    async def execute(self, metadata: Metadata, request_id: str) -> str:
        response = await self.requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=request_id),
            metadata=metadata,
            timeout=10,
        )
        return response.execution_id

    async def get_request(self, metadata: Metadata, request_id: str) -> requests_pb2.ClientRequest:
        response = await self.requests.GetRequest(
            requests_pb2.GetRequestRequest(request_id=request_id), metadata=metadata, timeout=10
        )
        return response.request

    async def create_template(
        self, admin: Metadata, template: templates_pb2.MasterTemplate
    ) -> templates_pb2.MasterTemplate:
        response = await self.templates.CreateMasterTemplate(
            templates_pb2.CreateMasterTemplateRequest(template=template),
            metadata=admin,
            timeout=10,
        )
        return response.template


@asynccontextmanager
async def kam(mesh: InProcessMesh) -> AsyncIterator[Kam]:
    async with grpc.aio.insecure_channel(mesh.kam.address) as channel:
        yield Kam(channel)


def stage(order: int = 1, capability: str = "granulate", **fields: Any) -> Any:
    return templates_pb2.StageDefinition(
        order=order,
        name=fields.pop("name", "generate"),
        capability=capability,
        action=fields.pop("action", "generate"),
        structure_template=fields.pop("structure_template", "course"),
        **fields,
    )


def template(name: str, *stages: Any, **fields: Any) -> templates_pb2.MasterTemplate:
    return templates_pb2.MasterTemplate(
        name=name,
        description=fields.pop("description", "a test template"),
        structure_type=fields.pop("structure_type", common_pb2.STRUCTURE_TYPE_COURSE),
        stages=list(stages) or [stage()],
        cost_estimate_usd=fields.pop("cost_estimate_usd", 0.05),
        **fields,
    )


def parked_template(name: str, cost: float = 0.05, **fields: Any) -> templates_pb2.MasterTemplate:
    """A template whose stage needs a capability no worker has: its executions wait in the
    orchestrator's queue, so the request stays running for as long as a test needs."""
    return template(name, stage(capability=PARKED_CAPABILITY), cost_estimate_usd=cost, **fields)


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits `call`, which must fail with `code`; returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, f"{raised.value.code()}: {raised.value.details()}"
    return raised.value


def details(error: grpc.aio.AioRpcError, kind: type[DetailT]) -> list[DetailT]:
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin"
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def reason(error: grpc.aio.AioRpcError) -> str:
    (info,) = details(error, error_details_pb2.ErrorInfo)
    return info.reason


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    (bad,) = details(error, error_details_pb2.BadRequest)
    assert all(v.description for v in bad.field_violations)
    return {v.field for v in bad.field_violations}


async def client_user(kam: Kam, client: Client, email: str = "") -> Metadata:
    """Signs in a new ROLE_CLIENT user of `client`."""
    email = email or f"user-{client.client_id[-6:]}@acme.test"
    await kam.create_user(client.admin, email, common_pb2.ROLE_CLIENT, client.client_id)
    return await kam.login(email)
