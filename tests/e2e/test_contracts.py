"""Wire contracts of every server: each declared RPC is served, credentials are enforced, and errors
carry the rich `google.rpc.Status` details. The RPCs are called generically from the descriptors,
so a new RPC in a proto is covered without touching this file."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
)
from bitware_core.auth import PUBLIC, Credentials, Principal
from bitware_core.config import Settings
from bitware_core.errors import Unauthenticated
from bitware_core.server import MeshServer, Service
from bitware_mesh.inprocess import InProcessMesh
from tests.common import Client, make_client

Metadata = tuple[tuple[str, str], ...]

PROTOS = Path(__file__).resolve().parents[2] / "protos"

#: Every generated module of a `.proto` under protos/bitware: a new contract is covered as soon
#: as it exists, with no list to keep up to date.
PROTO_MODULES: tuple[Any, ...] = tuple(
    importlib.import_module(".".join(path.relative_to(PROTOS).with_suffix("").parts) + "_pb2")
    for path in sorted((PROTOS / "bitware").rglob("*.proto"))
)


#: RPCs not implemented yet, as "package.Service/Method" (for example
#: "bitware.orchestrator.v1.OrchestratorService/RetryExecution"); each belongs to a later issue.
#: Empty now: every declared RPC answers. When a listed RPC starts working, remove it from this
#: set: the contract test fails until you do.
NOT_YET_IMPLEMENTED: frozenset[str] = frozenset()

#: What a not-yet-implemented RPC answers.
NOT_IMPLEMENTED_CODES = frozenset({grpc.StatusCode.UNIMPLEMENTED})

#: RPCs anyone may call without a credential (health and reflection are not in the protos above).
PUBLIC_RPCS = frozenset({"bitware.kam.v1.AuthService/Login"})

#: Codes that mean a server failed to serve a call rather than answering it.
BROKEN_CODES = frozenset(
    {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
)

CALL_TIMEOUT = 2.0
GRPCURL = Path(sys.executable).parent / "grpcurl"
WRONG_API_KEY: Metadata = (("x-api-key", "bwk_wrong"),)

DetailT = TypeVar("DetailT", bound=Message)


@dataclass(frozen=True)
class Rpc:
    """One RPC declared in a proto."""

    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def name(self) -> str:
        """`package.Service/Method`."""
        return f"{self.service.full_name}/{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.name}"

    @property
    def package(self) -> str:
        return str(self.service.file.package)

    def empty_request(self) -> Message:
        request: Message = message_factory.GetMessageClass(self.method.input_type)()
        return request


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its status code and, when it failed, the error."""

    code: grpc.StatusCode
    error: grpc.aio.AioRpcError | None = None


def declared_rpcs() -> Iterator[Rpc]:
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield Rpc(service, method)


def rpc_named(name: str) -> Rpc:
    return next(rpc for rpc in declared_rpcs() if rpc.name == name)


def address_of(mesh: InProcessMesh, rpc: Rpc) -> str:
    """The server hosting `rpc`, by its proto package."""
    hosts = {
        "bitware.kam.v1": mesh.kam.address,
        "bitware.orchestrator.v1": mesh.orchestrator.address,
        "bitware.worker.v1": mesh.granulators[0].address,
        "bitware.granulator.v1": mesh.granulators[0].address,
    }
    return hosts[rpc.package]


def allowed_credentials(client: Client, rpc: Rpc, logout_session: Metadata) -> Metadata:
    """A credential the access table lets call `rpc`; Logout gets a session of its own so the
    admin's session survives."""
    if rpc.name == "bitware.kam.v1.AuthService/Logout":
        return logout_session
    if rpc.service.full_name == "bitware.worker.v1.WorkerService":
        return client.worker("orchestrator")
    if rpc.name == "bitware.kam.v1.RequestService/RecordExecutionOutcome":
        return client.worker("orchestrator")
    if rpc.name in (
        "bitware.orchestrator.v1.WorkerRegistryService/RegisterWorker",
        "bitware.orchestrator.v1.WorkerRegistryService/Heartbeat",
    ):
        return client.worker("granulator-1")
    return client.admin


async def call(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    metadata: Metadata | None,
    request: Message | None = None,
) -> Outcome:
    """Calls `rpc` with `request` (empty by default); for a server stream, reads only the first
    message. A stream still waiting when the timeout ends reports DEADLINE_EXCEEDED."""
    message = request if request is not None else rpc.empty_request()
    output = message_factory.GetMessageClass(rpc.method.output_type)
    serialize = type(message).SerializeToString
    try:
        if rpc.method.server_streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=serialize, response_deserializer=output.FromString
            )(message, metadata=metadata, timeout=CALL_TIMEOUT)
            try:
                await stream.read()
            finally:
                stream.cancel()
        else:
            await channel.unary_unary(
                rpc.path, request_serializer=serialize, response_deserializer=output.FromString
            )(message, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error)
    return Outcome(grpc.StatusCode.OK)


async def call_on_mesh(mesh: InProcessMesh, rpc: Rpc, metadata: Metadata | None) -> Outcome:
    async with grpc.aio.insecure_channel(address_of(mesh, rpc)) as channel:
        return await call(channel, rpc, metadata)


async def login(mesh: InProcessMesh) -> Metadata:
    """A fresh admin session (for calls such as Logout that end the session they use)."""
    async with grpc.aio.insecure_channel(mesh.kam.address) as channel:
        response = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(
                email=mesh.credentials.admin_email, password=mesh.credentials.admin_password
            ),
            timeout=10,
        )
    return (("x-bitware-session-token", response.session_token),)


async def call_all_allowed(client: Client, rpcs: Iterable[Rpc]) -> dict[str, Outcome]:
    """Calls each RPC with an empty request and a credential its access table allows."""
    logout_session = await login(client.mesh)
    return {
        rpc.name: await call_on_mesh(
            client.mesh, rpc, allowed_credentials(client, rpc, logout_session)
        )
        for rpc in rpcs
    }


def describe(outcome: Outcome) -> str:
    return f"{outcome.code.name}: {outcome.error.details() if outcome.error else ''}"


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The `google.rpc.Status` a failed call carries in `grpc-status-details-bin` (its code and
    message must match the call's)."""
    status: status_pb2.Status | None = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} carries no grpc-status-details-bin"
    return status


def unpack_all(status: status_pb2.Status, kind: type[DetailT]) -> list[DetailT]:
    """The details of type `kind` in `status`."""
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


async def grpcurl(*args: str) -> str:
    """Runs the real grpcurl binary without blocking the event loop the servers run in."""
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"grpcurl {' '.join(args)} failed: {stderr.decode()}"
    return stdout.decode()


async def test_every_declared_rpc_is_implemented_except_the_listed_ones(client: Client) -> None:
    outcomes = await call_all_allowed(client, declared_rpcs())

    unknown = NOT_YET_IMPLEMENTED - set(outcomes)
    assert not unknown, f"NOT_YET_IMPLEMENTED names RPCs no proto declares: {sorted(unknown)}"
    broken = {
        name: describe(outcome)
        for name, outcome in outcomes.items()
        if name not in NOT_YET_IMPLEMENTED and outcome.code in BROKEN_CODES
    }
    assert not broken, f"RPCs that fail instead of answering an empty request: {broken}"
    now_working = {
        name: describe(outcomes[name])
        for name in sorted(NOT_YET_IMPLEMENTED)
        if outcomes[name].code not in NOT_IMPLEMENTED_CODES
    }
    assert not now_working, (
        "these RPCs no longer answer UNIMPLEMENTED, so they work now: "
        f"remove them from NOT_YET_IMPLEMENTED: {now_working}"
    )


class NobodyAuthenticator:
    """Rejects every credential (the test server below only has public RPCs)."""

    async def authenticate(self, credentials: Credentials) -> Principal:
        raise Unauthenticated("this test server has no callers")


async def test_an_unimplemented_rpc_answers_unimplemented() -> None:
    rpc = rpc_named("bitware.kam.v1.AuditService/ListAuditEvents")
    bare = accounts_pb2_grpc.AuditServiceServicer()  # type: ignore[abstract]  # generated base
    server = MeshServer(
        Settings(),
        [
            Service(
                rpc.service,
                lambda grpc_server: accounts_pb2_grpc.add_AuditServiceServicer_to_server(
                    bare, grpc_server
                ),
                {rpc.method.name: PUBLIC},
            )
        ],
        NobodyAuthenticator(),
        "test.bitware",
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            outcome = await call(channel, rpc, None)
    finally:
        await server.stop(0)
    assert outcome.code == grpc.StatusCode.UNIMPLEMENTED, describe(outcome)


async def test_calls_without_credentials_are_unauthenticated(client: Client) -> None:
    guarded = [rpc for rpc in declared_rpcs() if rpc.name not in PUBLIC_RPCS]
    for label, metadata in (("no credential", None), ("a wrong API key", WRONG_API_KEY)):
        wrong: dict[str, str] = {}
        for rpc in guarded:
            outcome = await call_on_mesh(client.mesh, rpc, metadata)
            if outcome.code != grpc.StatusCode.UNAUTHENTICATED:
                wrong[rpc.name] = describe(outcome)
        assert not wrong, f"calls with {label} that were not UNAUTHENTICATED: {wrong}"


@pytest.mark.parametrize(
    "rpc_name",
    [
        "bitware.kam.v1.RequestService/GetRequest",
        "bitware.orchestrator.v1.OrchestratorService/GetExecution",
        "bitware.granulator.v1.GranulatorService/GetJob",
    ],
)
async def test_unauthenticated_error_carries_error_info(mesh: InProcessMesh, rpc_name: str) -> None:
    outcome = await call_on_mesh(mesh, rpc_named(rpc_name), None)
    assert outcome.code == grpc.StatusCode.UNAUTHENTICATED and outcome.error is not None
    status = status_details(outcome.error)
    assert status.code == code_pb2.UNAUTHENTICATED
    infos = unpack_all(status, error_details_pb2.ErrorInfo)
    assert len(infos) == 1, status
    assert infos[0].reason and infos[0].domain, infos[0]


async def test_invalid_argument_has_field_violations(client: Client) -> None:
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await requests_pb2_grpc.RequestServiceStub(channel).CreateRequest(
                requests_pb2.CreateRequestRequest(
                    spec=common_pb2.ContentSpec(
                        topic="",
                        structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                        granularity=9,
                    )
                ),
                metadata=client.key,
                timeout=10,
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_details(raised.value)
    requests = unpack_all(status, error_details_pb2.BadRequest)
    assert len(requests) == 1
    fields = {violation.field for violation in requests[0].field_violations}
    assert {"spec.topic", "spec.granularity"} <= fields
    assert all(violation.description for violation in requests[0].field_violations)


async def test_client_cannot_see_another_clients_request(client: Client) -> None:
    other = await make_client(client.mesh)
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as channel:
        requests = requests_pb2_grpc.RequestServiceStub(channel)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(
                    topic="Private Topic",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    granularity=3,
                )
            ),
            metadata=client.key,
            timeout=10,
        )
        lookup = requests_pb2.GetRequestRequest(request_id=created.request.request_id)
        own = await requests.GetRequest(lookup, metadata=client.key, timeout=10)
        assert own.request.request_id == created.request.request_id
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await requests.GetRequest(lookup, metadata=other.key, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_support_role_and_permission_denied(client: Client) -> None:
    request = accounts_pb2.CreateClientRequest(
        client=accounts_pb2.Client(
            company_name="Sneaky Ltd",
            contact_email="ops@sneaky.test",
            tier=common_pb2.TIER_STANDARD,
            monthly_budget_usd=10.0,
        )
    )
    create_client = rpc_named("bitware.kam.v1.ClientService/CreateClient")
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as channel:
        for caller, metadata in (
            ("API key", client.key),
            ("worker", client.worker("granulator-1")),
        ):
            outcome = await call(channel, create_client, metadata, request)
            assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (caller, describe(outcome))
            assert outcome.error is not None
            infos = unpack_all(status_details(outcome.error), error_details_pb2.ErrorInfo)
            assert len(infos) == 1 and infos[0].reason and infos[0].domain, (caller, infos)

    # The access table is enforced on the other servers too: workers are for staff only.
    outcome = await call_on_mesh(
        client.mesh,
        rpc_named("bitware.orchestrator.v1.WorkerRegistryService/ListWorkers"),
        client.key,
    )
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, describe(outcome)


async def test_grpcurl_lists_and_checks_health_on_every_server(client: Client) -> None:
    mesh = client.mesh
    expected: dict[str, set[str]] = {
        address: {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        for address in (mesh.kam.address, mesh.orchestrator.address, mesh.granulators[0].address)
    }
    for rpc in declared_rpcs():
        expected[address_of(mesh, rpc)].add(str(rpc.service.full_name))

    for address, services in expected.items():
        listed = set((await grpcurl("-plaintext", address, "list")).split())
        assert services <= listed, (address, sorted(services - listed))

        health = await grpcurl(
            "-plaintext", "-d", '{"service": ""}', address, "grpc.health.v1.Health/Check"
        )
        assert json.loads(health) == {"status": "SERVING"}, (address, health)

    templates = await grpcurl(
        "-plaintext",
        "-H",
        f"x-api-key: {client.api_key}",
        mesh.kam.address,
        "bitware.kam.v1.TemplateService/ListMasterTemplates",
    )
    assert "course_standard" in templates
