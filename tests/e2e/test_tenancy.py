"""Per-tenant everything: every RPC of KAM, the orchestrator and the granulator that names an
id, called by another tenant with each kind of client principal (API key, client user's
session) and the first tenant's ids, answers NOT_FOUND — or PERMISSION_DENIED where the access
table does not let client principals call it at all. The RPCs and their id fields come from
the services' descriptors, so a new RPC is walked without touching this file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, requests_pb2, webhooks_pb2, webhooks_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.auth import CLIENT
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from tests.common import Client, make_client, submit
from tests.e2e.test_contracts import Rpc, call, describe
from tests.kam.helpers import client_user, kam

#: RPCs whose `*_id` fields are not something to look up, and why.
NOT_LOOKUPS = {
    "bitware.kam.v1.AuthService/Authenticate": "its worker_id is half of a credential to check",
}


@pytest.fixture
async def idle_mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    """A mesh without workers: executions stay queued."""
    running = await start_mesh(tmp_path, granulators=0)
    try:
        yield running
    finally:
        await running.stop()


def id_fields(descriptor: Descriptor, prefix: str = "") -> Iterator[str]:
    """The request's fields that name something by id (`*_id`), and those of the messages it
    holds, one level down (`user.user_id`, `stage.execution_id`)."""
    for field in descriptor.fields:
        if field.name.endswith("_id") and field.type == field.TYPE_STRING:
            yield prefix + field.name
        elif (
            field.message_type is not None
            and not prefix
            and not field.message_type.GetOptions().map_entry
        ):
            yield from id_fields(field.message_type, f"{field.name}.")


def with_id(rpc: Rpc, path: str, ids: dict[str, str]) -> Message:
    """An otherwise empty request whose one id field `path` names a thing from `ids` (one field
    at a time: some requests take exactly one of several ids)."""
    request = rpc.empty_request()
    *parents, name = path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    setattr(target, name, ids[name])
    return request


async def listed_nothing(
    address: str, rpc: Rpc, metadata: tuple[tuple[str, str], ...], request: Message
) -> bool:
    """True when the List RPC answers with no items at all (or fails)."""
    output = message_factory.GetMessageClass(rpc.method.output_type)
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await channel.unary_unary(
                rpc.path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=output.FromString,
            )(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError:
            return True
    return not any(
        getattr(response, field.name)
        for field in rpc.method.output_type.fields
        if field.is_repeated
    )


def served_rpcs(mesh: InProcessMesh) -> Iterator[tuple[str, Rpc]]:
    """(address, RPC) for every RPC the mesh's servers serve, from their services' descriptors
    (so a new RPC, or a new service, is walked without touching this file)."""
    for server in (mesh.kam, mesh.orchestrator, mesh.granulators[0]):
        for service in server.services:
            for method in service.descriptor.methods:
                yield server.address, Rpc(service.descriptor, method)


def access_tables(mesh: InProcessMesh) -> dict[str, frozenset[str]]:
    """`package.Service/Method` → the caller tags its server's access table lets in."""
    servers = (mesh.kam, mesh.orchestrator, mesh.granulators[0])
    return {
        f"{service.name}/{method}": tags
        for server in servers
        for service in server.services
        for method, tags in service.access.items()
    }


async def finished_request(mesh: InProcessMesh, owner: Client) -> tuple[str, str]:
    """Runs a course for `owner` through the whole mesh: (request id, execution id)."""
    async with grpc.aio.insecure_channel(mesh.kam.address) as channel:
        request_id, execution_id = await submit(
            channel,
            owner,
            common_pb2.ContentSpec(
                topic="Tenancy", granularity=1, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
            ),
        )
    async with grpc.aio.insecure_channel(mesh.orchestrator.address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        watch = stub.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
            metadata=owner.key,
            timeout=60,
        )
        try:
            async for _ in watch:
                pass
        finally:
            watch.cancel()
    return request_id, execution_id


async def test_another_tenants_ids_answer_not_found_on_every_rpc(client: Client) -> None:
    mesh = client.mesh
    owner = await make_client(mesh)  # tenant A: its things are what tenant B asks for
    request_id, execution_id = await finished_request(mesh, owner)
    intruder = client  # tenant B, with things of its own (so that an empty list means something)
    await finished_request(mesh, intruder)
    async with grpc.aio.insecure_channel(mesh.orchestrator.address) as channel:
        execution = (
            await orchestrator_pb2_grpc.OrchestratorServiceStub(channel).GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                metadata=owner.key,
                timeout=10,
            )
        ).execution
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED and execution.job_id
    async with kam(mesh) as k:
        their_user = await k.create_user(
            client.admin, "owner@tenant-a.test", common_pb2.ROLE_CLIENT, owner.client_id
        )
        their_hook = await webhooks_pb2_grpc.WebhookServiceStub(k.channel).CreateWebhookEndpoint(
            # Made after A's request finished: nothing of A's happens to be delivered to it.
            webhooks_pb2.CreateWebhookEndpointRequest(url="https://hooks.tenant-a.test/bitware"),
            metadata=owner.key,
            timeout=10,
        )
        their_keys = await k.keys.ListApiKeys(
            accounts_pb2.ListApiKeysRequest(client_id=owner.client_id),
            metadata=owner.key,
            timeout=10,
        )
        principals = {"API key": intruder.key, "client user": await client_user(k, intruder)}
    theirs = {
        "client_id": owner.client_id,
        "request_id": request_id,
        "execution_id": execution_id,
        "job_id": execution.job_id,
        "previous_job_id": execution.job_id,
        "stage_id": execution.stages[0].stage_id,
        "user_id": their_user.user_id,
        "api_key_id": their_keys.api_keys[0].api_key_id,
        "endpoint_id": their_hook.endpoint.endpoint_id,
        "worker_id": "granulator-1",  # workers are nobody's tenant data: staff and workers only
    }
    made_up = {name: f"missing_{name}" for name in theirs}
    access = access_tables(mesh)
    walked, wrong = set(), {}
    for address, rpc in served_rpcs(mesh):
        if rpc.name in NOT_LOOKUPS:
            continue
        for path in id_fields(rpc.method.input_type):
            walked.add(rpc.method.name)
            for kind, metadata in principals.items():
                mine = with_id(rpc, path, theirs)
                async with grpc.aio.insecure_channel(address) as channel:
                    outcome = await call(channel, rpc, metadata, mine)
                    nowhere = await call(channel, rpc, metadata, with_id(rpc, path, made_up))
                # Their id answers exactly as an id that exists nowhere: NOT_FOUND, or
                # PERMISSION_DENIED when client principals (or this kind of them) may not call
                # the RPC at all; a list filtered by something of theirs is empty.
                if CLIENT in access[rpc.name]:
                    allowed = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}
                    if rpc.method.name.startswith("List") and await listed_nothing(
                        address, rpc, metadata, mine
                    ):
                        allowed.add(grpc.StatusCode.OK)
                else:
                    allowed = {grpc.StatusCode.PERMISSION_DENIED}
                if outcome.code not in allowed or outcome.code != nowhere.code:
                    wrong[f"{rpc.name} {path} as {kind}"] = (
                        f"{describe(outcome)} (an id that exists nowhere: {nowhere.code.name})"
                    )
    assert not wrong, wrong
    # A sample of what the descriptors yield (every RPC naming an id is walked).
    sample = {"GetRequest", "RetryRequest", "WatchExecution", "GetStructure", "GetUsage"}
    assert sample | {"DeleteWebhookEndpoint"} <= walked

    # Nothing of tenant A changed (its request was not cancelled, retried or executed again).
    async with kam(mesh) as k:
        mine = await k.get_request(owner.key, request_id)
    assert mine.status == requests_pb2.REQUEST_STATUS_COMPLETED and mine.retries == 0


async def test_get_queue_shows_a_client_only_its_own_work(idle_mesh: InProcessMesh) -> None:
    first = await make_client(idle_mesh)
    second = await make_client(idle_mesh)
    async with grpc.aio.insecure_channel(idle_mesh.kam.address) as channel:
        spec = common_pb2.ContentSpec(
            topic="Queued", granularity=1, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
        )
        for _ in range(2):
            await submit(channel, first, spec)
    async with grpc.aio.insecure_channel(idle_mesh.orchestrator.address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)

        async def depth(metadata: tuple[tuple[str, str], ...]) -> int:
            queue = await stub.GetQueue(
                orchestrator_pb2.GetQueueRequest(), metadata=metadata, timeout=10
            )
            return queue.total_depth

        assert await depth(first.key) == 2
        assert await depth(second.key) == 0
        assert await depth(first.admin) == 2  # staff see every client's
        async with kam(idle_mesh) as k:
            assert await depth(await client_user(k, second)) == 0
            assert await depth(await client_user(k, first)) == 2


async def test_idempotency_keys_are_scoped_per_client(client: Client) -> None:
    other = await make_client(client.mesh)
    template = orchestrator_pb2.ExecutePipelineRequest(
        template_name="course_standard",
        spec=common_pb2.ContentSpec(
            topic="Same key", granularity=1, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
        ),
        idempotency_key="shared-key",
    )
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        ids = []
        for owner in (client, other, client):
            request = orchestrator_pb2.ExecutePipelineRequest()
            request.CopyFrom(template)
            request.client_id = owner.client_id
            response = await stub.ExecutePipeline(request, metadata=client.admin, timeout=10)
            assert response.execution.client_id == owner.client_id
            ids.append(response.execution.execution_id)
    # The other client's key started its own execution; the same client's key returned its own.
    assert ids[0] != ids[1] and ids[2] == ids[0]

    async with kam(client.mesh) as k:
        requests = [
            await k.create_request(owner.key, idempotency_key="shared-key")
            for owner in (client, other, client)
        ]
    assert [r.client_id for r in requests] == [client.client_id, other.client_id, client.client_id]
    assert requests[0].request_id != requests[1].request_id
    assert requests[2].request_id == requests[0].request_id
