"""API keys with scopes every server enforces, and optional expiry."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from sqlalchemy import update
from sqlalchemy.orm import Session

from bitware.kam.v1 import accounts_pb2, requests_pb2, templates_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.auth import CLIENT, READ, WRITE, required_scope
from bitware_core.db import utcnow
from kam_server import models
from tests.common import Client
from tests.kam.helpers import Kam, Metadata, details, fails, kam, parked_template, reason

#: Every RPC a client's API key may reach, and the scope it needs. A new client RPC fails
#: test_every_client_rpc_needs_the_scope_the_table_gives until it is added here.
SCOPES = {
    "bitware.kam.v1.AuthService/Logout": WRITE,
    "bitware.kam.v1.AuthService/Authenticate": READ,
    "bitware.kam.v1.UserService/GetUser": READ,
    "bitware.kam.v1.ClientService/GetClient": READ,
    "bitware.kam.v1.ClientService/GetUsage": READ,
    "bitware.kam.v1.ClientService/ListTiers": READ,
    "bitware.kam.v1.ApiKeyService/CreateApiKey": WRITE,
    "bitware.kam.v1.ApiKeyService/ListApiKeys": READ,
    "bitware.kam.v1.ApiKeyService/RevokeApiKey": WRITE,
    "bitware.kam.v1.TemplateService/GetMasterTemplate": READ,
    "bitware.kam.v1.TemplateService/ListMasterTemplates": READ,
    "bitware.kam.v1.RequestService/CreateRequest": WRITE,
    "bitware.kam.v1.RequestService/GetRequest": READ,
    "bitware.kam.v1.RequestService/ListRequests": READ,
    "bitware.kam.v1.RequestService/ExecuteRequest": WRITE,
    "bitware.kam.v1.RequestService/RetryRequest": WRITE,
    "bitware.kam.v1.RequestService/CancelRequest": WRITE,
    "bitware.orchestrator.v1.OrchestratorService/GetExecution": READ,
    "bitware.orchestrator.v1.OrchestratorService/ListExecutions": READ,
    "bitware.orchestrator.v1.OrchestratorService/CancelExecution": WRITE,
    "bitware.orchestrator.v1.OrchestratorService/WatchExecution": READ,
    "bitware.orchestrator.v1.OrchestratorService/GetQueue": READ,
    "bitware.granulator.v1.GranulatorService/GetJob": READ,
    "bitware.granulator.v1.GranulatorService/ListJobs": READ,
    "bitware.granulator.v1.GranulatorService/GetStructure": READ,
    "bitware.granulator.v1.GranulatorService/ListTemplates": READ,
    "bitware.granulator.v1.GranulatorService/GetTemplate": READ,
    "bitware.granulator.v1.GranulatorService/ListModelCalls": READ,
    "bitware.kam.v1.WebhookService/CreateWebhookEndpoint": WRITE,
    "bitware.kam.v1.WebhookService/DeleteWebhookEndpoint": WRITE,
    "bitware.kam.v1.WebhookService/ListWebhookEndpoints": READ,
    "bitware.kam.v1.WebhookService/ListWebhookDeliveries": READ,
}


async def new_key(
    k: Kam, client: Client, scopes: list[str] | None = None, expire_in: float = 0.0
) -> tuple[Metadata, accounts_pb2.ApiKey]:
    request = accounts_pb2.CreateApiKeyRequest(
        client_id=client.client_id, name="scoped", scopes=scopes or []
    )
    if expire_in:
        request.expire_time.FromDatetime(utcnow() + timedelta(seconds=expire_in))
    created = await k.keys.CreateApiKey(request, metadata=client.admin, timeout=10)
    return (("x-api-key", created.key),), created.api_key


def scope_refusal(error: grpc.aio.AioRpcError, scope: str) -> None:
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    (info,) = details(error, error_details_pb2.ErrorInfo)
    assert info.reason == "API_KEY_SCOPE" and info.metadata["required_scope"] == scope


async def test_every_client_rpc_needs_the_scope_the_table_gives(client: Client) -> None:
    mesh = client.mesh
    found = {
        f"{service.name}/{method}": required_scope(f"/{service.name}/{method}")
        for server in (mesh.kam, mesh.orchestrator, mesh.granulators[0])
        for service in server.services
        for method, tags in service.access.items()
        if CLIENT in tags
    }
    assert found == SCOPES


async def test_a_read_key_reads_but_cannot_create_execute_or_cancel(client: Client) -> None:
    async with (
        kam(client.mesh) as k,
        grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel,
    ):
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        await k.create_template(client.admin, parked_template("parked"))
        request = await k.create_request(client.key, "parked")
        execution_id = await k.execute(client.key, request.request_id)
        reader, record = await new_key(k, client, ["read"])
        assert list(record.scopes) == ["read"]

        # Reading works on KAM and on the orchestrator.
        got = await k.get_request(reader, request.request_id)
        assert got.request_id == request.request_id
        listed = await k.requests.ListRequests(
            requests_pb2.ListRequestsRequest(), metadata=reader, timeout=10
        )
        assert [r.request_id for r in listed.requests] == [request.request_id]
        await k.templates.ListMasterTemplates(
            templates_pb2.ListMasterTemplatesRequest(), metadata=reader, timeout=10
        )
        execution = await orchestrator.GetExecution(
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
            metadata=reader,
            timeout=10,
        )
        assert execution.execution.execution_id == execution_id

        # Creating, executing and cancelling are refused with the scope they need.
        refused: list[Callable[[], Awaitable[Any]]] = [
            lambda: k.create_request(reader, "parked"),
            lambda: k.execute(reader, request.request_id),
            lambda: k.requests.CancelRequest(
                requests_pb2.CancelRequestRequest(request_id=request.request_id),
                metadata=reader,
                timeout=10,
            ),
            lambda: orchestrator.CancelExecution(
                orchestrator_pb2.CancelExecutionRequest(execution_id=execution_id),
                metadata=reader,
                timeout=10,
            ),
        ]
        for call in refused:
            scope_refusal(await fails(call(), grpc.StatusCode.PERMISSION_DENIED), WRITE)
        # Nothing changed: the request still runs, and no second request exists.
        assert (await k.get_request(client.key, request.request_id)).status == (
            requests_pb2.REQUEST_STATUS_RUNNING
        )

        # A write-only key acts but does not read.
        writer, _ = await new_key(k, client, ["write"])
        await k.create_request(writer, "parked")
        scope_refusal(
            await fails(
                k.get_request(writer, request.request_id), grpc.StatusCode.PERMISSION_DENIED
            ),
            READ,
        )


async def test_scopes_and_expiry_are_checked_when_a_key_is_made(client: Client) -> None:
    async with kam(client.mesh) as k:
        past = timestamp_pb2.Timestamp()
        past.FromDatetime(utcnow() - timedelta(minutes=1))
        error = await fails(
            k.keys.CreateApiKey(
                accounts_pb2.CreateApiKeyRequest(
                    client_id=client.client_id,
                    name="bad",
                    scopes=["read", "admin", "read"],
                    expire_time=past,
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        (bad,) = details(error, error_details_pb2.BadRequest)
        assert {v.field for v in bad.field_violations} == {"scopes[1]", "scopes[2]", "expire_time"}
        # The default is every scope and no expiry; both are listed.
        _, everything = await new_key(k, client)
        _, expiring = await new_key(k, client, ["read"], expire_in=3600)
        keys = await k.keys.ListApiKeys(
            accounts_pb2.ListApiKeysRequest(client_id=client.client_id), metadata=client.admin
        )
        by_id = {key.api_key_id: key for key in keys.api_keys}
        assert list(by_id[everything.api_key_id].scopes) == ["read", "write"]
        assert not by_id[everything.api_key_id].HasField("expire_time")
        assert by_id[expiring.api_key_id].expire_time == expiring.expire_time
        assert expiring.expire_time.ToDatetime() > utcnow() + timedelta(minutes=59)


async def refused_within(
    call: Callable[[], Awaitable[Any]], seconds: float
) -> grpc.aio.AioRpcError:
    """Repeats `call` until it fails (credential caches may answer for a little while)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            return error
        assert loop.time() < deadline, f"still accepted after {seconds} s"
        await asyncio.sleep(0.2)


async def test_an_expired_key_is_unauthenticated_everywhere(client: Client) -> None:
    async with (
        kam(client.mesh) as k,
        grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel,
    ):
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        key, record = await new_key(k, client, expire_in=3600)
        await k.whoami(key)

        def expire(session: Session) -> None:  # an hour passes
            session.execute(
                update(models.ApiKey)
                .where(models.ApiKey.id == record.api_key_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

        await client.mesh.kam.db.run(expire)
        error = await refused_within(lambda: k.whoami(key), 15)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(error) == "API_KEY_EXPIRED" and "expired" in (error.details() or "")
        error = await refused_within(
            lambda: orchestrator.GetQueue(
                orchestrator_pb2.GetQueueRequest(), metadata=key, timeout=10
            ),
            15,
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (error.details() or "")


async def test_grpcurl_with_a_read_key_cannot_create_a_request(client: Client) -> None:
    async with kam(client.mesh) as k:
        reader, _ = await new_key(k, client, ["read"])
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "grpcurl"),
        "-plaintext",
        "-H",
        f"x-api-key: {reader[0][1]}",
        "-d",
        '{"spec": {"topic": "Go", "structure_type": "STRUCTURE_TYPE_COURSE"}}',
        client.mesh.kam.address,
        "bitware.kam.v1.RequestService/CreateRequest",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 64 + grpc.StatusCode.PERMISSION_DENIED.value[0]  # 71
    assert "'write'" in stderr.decode()
