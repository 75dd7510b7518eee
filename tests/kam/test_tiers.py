"""Each tier limit is enforced, with its own ErrorInfo reason."""

from __future__ import annotations

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from tests.common import Client, make_client
from tests.kam.helpers import fails, kam, parked_template, reason


async def test_tiers_are_listed_with_their_limits(client: Client) -> None:
    async with kam(client.mesh) as k:
        tiers = await k.clients.ListTiers(accounts_pb2.ListTiersRequest(), metadata=client.key)
    assert [t.tier for t in tiers.tiers] == [1, 2, 3, 4]
    assert tiers.tiers[0].max_users == 2 and tiers.tiers[0].max_concurrent_executions == 1
    assert tiers.tiers[0].requests_per_second == 1.0 and tiers.tiers[0].request_burst == 10


async def test_tier_limit_users(client: Client) -> None:
    basic = await make_client(client.mesh, tier=common_pb2.TIER_BASIC)
    async with kam(client.mesh) as k:
        for name in ("a", "b"):
            await k.create_user(
                client.admin, f"{name}@b.test", common_pb2.ROLE_CLIENT, basic.client_id
            )
        error = await fails(
            k.create_user(client.admin, "c@b.test", common_pb2.ROLE_CLIENT, basic.client_id),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    assert reason(error) == "TIER_LIMIT_USERS"


async def test_tier_limit_requests(client: Client) -> None:
    basic = await make_client(client.mesh, tier=common_pb2.TIER_BASIC)
    async with kam(client.mesh) as k:
        # An admin creates them for the client (staff do not draw on its rate limit).
        for _ in range(50):  # basic: 50 requests a month
            await k.create_request(client.admin, client_id=basic.client_id)
        error = await fails(k.create_request(basic.key), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert reason(error) == "TIER_LIMIT_REQUESTS"


async def test_executions_over_the_concurrency_limit_are_accepted_and_wait(
    client: Client,
) -> None:
    basic = await make_client(client.mesh, tier=common_pb2.TIER_BASIC)
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("parked"))
        first = await k.create_request(basic.key, "parked")
        second = await k.create_request(basic.key, "parked")
        await k.execute(basic.key, first.request_id)  # basic: one execution at a time
        waiting = await k.execute(basic.key, second.request_id)  # accepted all the same
        assert (await k.get_request(basic.key, second.request_id)).status == (
            requests_pb2.REQUEST_STATUS_RUNNING
        )
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        call = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=waiting),
            metadata=basic.key,
            timeout=10,
        )
        try:
            events = [await call.read(), await call.read()]
        finally:
            call.cancel()
    assert [e.event.type for e in events] == [
        orchestrator_pb2.EVENT_TYPE_EXECUTION_QUEUED,
        orchestrator_pb2.EVENT_TYPE_STAGE_QUEUED,
    ]
    assert events[1].event.message == "waiting for the client's turn"


async def test_tier_priority(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.create_request(client.key, urgency=requests_pb2.URGENCY_CRITICAL),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        assert reason(error) == "TIER_PRIORITY"
        await k.create_request(client.key, urgency=requests_pb2.URGENCY_HIGH)  # standard: high


async def test_tier_template(client: Client) -> None:
    async with kam(client.mesh) as k:
        await k.create_template(
            client.admin,
            parked_template("premium_only", allowed_tiers=[common_pb2.TIER_PREMIUM]),
        )
        error = await fails(
            k.create_request(client.key, "premium_only"), grpc.StatusCode.PERMISSION_DENIED
        )
        assert reason(error) == "TIER_TEMPLATE"
        premium = await make_client(client.mesh, tier=common_pb2.TIER_PREMIUM)
        await k.create_request(premium.key, "premium_only")
