"""Who may call which KAM RPC: every RPC × every kind of caller, and NOT_FOUND (never a hint)
for another client's ids."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.message import Message

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, auth_pb2, requests_pb2, templates_pb2, webhooks_pb2
from tests.common import Client, make_client
from tests.kam.helpers import Kam, Metadata, client_user, fails, kam

KINDS = ("admin", "support", "client_user", "api_key", "worker", "service", "none")
A, S, C, K, W, V = "admin", "support", "client_user", "api_key", "worker", "service"
READERS = {A, S, C, K, V}
ANY = {A, S, C, K, W, V}

#: Who is let through, per RPC. Everyone else gets PERMISSION_DENIED (no credential:
#: UNAUTHENTICATED). "Let through" means the call reached the logic: it may still answer
#: INVALID_ARGUMENT or NOT_FOUND for the empty request used here.
MATRIX: dict[str, set[str]] = {
    "AuthService/Login": {*ANY, "none"},
    "AuthService/Logout": READERS,
    "AuthService/Authenticate": ANY,
    "UserService/CreateUser": {A},
    "UserService/GetUser": READERS,
    "UserService/ListUsers": {A, S},
    "UserService/UpdateUser": {A},
    "UserService/DeleteUser": {A},
    "ClientService/CreateClient": {A},
    "ClientService/GetClient": READERS,
    "ClientService/ListClients": {A, S},
    "ClientService/UpdateClient": {A},
    "ClientService/SuspendClient": {A},
    "ClientService/GetUsage": READERS,
    "ClientService/ListTiers": ANY,
    "ApiKeyService/CreateApiKey": {A, C},  # API keys cannot mint keys
    "ApiKeyService/ListApiKeys": READERS,
    "ApiKeyService/RevokeApiKey": {A, C},
    "WorkerCredentialService/CreateWorkerCredential": {A},
    "WorkerCredentialService/RotateWorkerCredential": {A},
    "WorkerCredentialService/ListWorkerCredentials": {A, S},
    "WorkerCredentialService/RevokeWorkerCredential": {A},
    "AuditService/ListAuditEvents": {A, S},
    "TemplateService/CreateMasterTemplate": {A},
    "TemplateService/GetMasterTemplate": ANY,
    "TemplateService/ListMasterTemplates": ANY,
    "TemplateService/DeprecateMasterTemplate": {A},
    "RequestService/CreateRequest": {A, C, K},
    "RequestService/GetRequest": READERS,
    "RequestService/ListRequests": READERS,
    "RequestService/ExecuteRequest": {A, C, K},
    "RequestService/RetryRequest": {A, C, K},
    "RequestService/CancelRequest": {A, C, K},
    "RequestService/RecordExecutionOutcome": {V},
    "WebhookService/CreateWebhookEndpoint": {A, C, K},
    "WebhookService/ListWebhookEndpoints": READERS,
    "WebhookService/DeleteWebhookEndpoint": {A, C, K},
    "WebhookService/ListWebhookDeliveries": READERS,
}

PROTOS = (auth_pb2, accounts_pb2, templates_pb2, requests_pb2, webhooks_pb2)


def kam_rpcs() -> dict[str, tuple[Message, type[Message]]]:
    """`Service/Method` → (empty request, response class), for every RPC the KAM protos declare."""
    found = {}
    for module in PROTOS:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"{service.name}/{method.name}"] = (
                    message_factory.GetMessageClass(method.input_type)(),
                    message_factory.GetMessageClass(method.output_type),
                )
    return found


async def principals(kam: Kam, client: Client) -> dict[str, Metadata | None]:
    await kam.create_user(client.admin, "support@bitware.test", common_pb2.ROLE_SUPPORT)
    return {
        A: client.admin,
        S: await kam.login("support@bitware.test"),
        C: await client_user(kam, client),
        K: client.key,
        W: client.worker("granulator-1"),
        V: client.worker("orchestrator"),
        "none": None,
    }


def test_the_matrix_lists_every_kam_rpc() -> None:
    assert set(MATRIX) == set(kam_rpcs())


async def test_every_kam_rpc_admits_exactly_the_callers_the_matrix_names(client: Client) -> None:
    wrong: dict[str, str] = {}
    async with kam(client.mesh) as k:
        callers = await principals(k, client)
        credentials = client.mesh.credentials
        sign_ins = {
            A: (credentials.admin_email, credentials.admin_password),
            S: ("support@bitware.test",),
            C: (f"user-{client.client_id[-6:]}@acme.test",),
        }
        for name, (request, response) in sorted(kam_rpcs().items()):
            for kind in KINDS:
                metadata = callers[kind]
                if name == "AuthService/Logout" and kind in sign_ins:
                    # Signing out ends the session used, so it gets one of its own.
                    metadata = await k.login(*sign_ins[kind])
                call = k.channel.unary_unary(
                    f"/bitware.kam.v1.{name}",
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=response.FromString,
                )
                try:
                    await call(request, metadata=metadata, timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                if kind in MATRIX[name]:
                    expected_ok = code not in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN,
                        grpc.StatusCode.UNIMPLEMENTED,
                    )
                elif kind == "none":
                    expected_ok = code == grpc.StatusCode.UNAUTHENTICATED
                else:
                    expected_ok = code == grpc.StatusCode.PERMISSION_DENIED
                if not expected_ok:
                    wrong[f"{name} as {kind}"] = code.name
    assert not wrong, wrong


@pytest.mark.parametrize("caller", ["api_key", "client_user"])
async def test_another_clients_ids_answer_not_found(client: Client, caller: str) -> None:
    other = await make_client(client.mesh)
    async with kam(client.mesh) as k:
        theirs = await k.create_request(other.key)
        their_user = await k.create_user(
            client.admin, "them@other.test", common_pb2.ROLE_CLIENT, other.client_id
        )
        their_keys = await k.keys.ListApiKeys(
            accounts_pb2.ListApiKeysRequest(client_id=other.client_id),
            metadata=other.admin,
            timeout=10,
        )
        me = client.key if caller == "api_key" else await client_user(k, client)
        not_found = grpc.StatusCode.NOT_FOUND
        await fails(
            k.clients.GetClient(
                accounts_pb2.GetClientRequest(client_id=other.client_id), metadata=me
            ),
            not_found,
        )
        await fails(
            k.clients.GetUsage(
                accounts_pb2.GetUsageRequest(client_id=other.client_id), metadata=me
            ),
            not_found,
        )
        await fails(
            k.keys.ListApiKeys(
                accounts_pb2.ListApiKeysRequest(client_id=other.client_id), metadata=me
            ),
            not_found,
        )
        await fails(
            k.users.GetUser(accounts_pb2.GetUserRequest(user_id=their_user.user_id), metadata=me),
            not_found,
        )
        request_id = theirs.request_id
        await fails(
            k.requests.GetRequest(
                requests_pb2.GetRequestRequest(request_id=request_id), metadata=me
            ),
            not_found,
        )
        await fails(
            k.requests.ExecuteRequest(
                requests_pb2.ExecuteRequestRequest(request_id=request_id), metadata=me
            ),
            not_found,
        )
        await fails(
            k.requests.CancelRequest(
                requests_pb2.CancelRequestRequest(request_id=request_id), metadata=me
            ),
            not_found,
        )
        if caller == "client_user":
            await fails(
                k.keys.RevokeApiKey(
                    accounts_pb2.RevokeApiKeyRequest(api_key_id=their_keys.api_keys[0].api_key_id),
                    metadata=me,
                ),
                not_found,
            )
        await fails(
            k.requests.ListRequests(
                requests_pb2.ListRequestsRequest(client_id=other.client_id), metadata=me
            ),
            not_found,
        )
        # Their request was left alone.
        assert (await k.get_request(other.key, theirs.request_id)).status == (
            requests_pb2.REQUEST_STATUS_PENDING
        )
