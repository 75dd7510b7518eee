"""Per-client request rate limits: a token bucket per tier, refused with RetryInfo, and one
bucket shared by several KAM replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware_core import convert
from bitware_core.config import Settings, StorageSettings
from bitware_core.tiers import TIER_LIMITS
from bitware_mesh.inprocess import start_mesh
from kam_server.server import serve as serve_kam
from tests.common import Client, make_client
from tests.kam.helpers import details, reason

BASIC = TIER_LIMITS["basic"]


async def create(
    stub: requests_pb2_grpc.RequestServiceStub, client: Client
) -> requests_pb2.CreateRequestResponse:
    return await stub.CreateRequest(
        requests_pb2.CreateRequestRequest(
            spec=common_pb2.ContentSpec(
                topic="Rates", granularity=1, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
            )
        ),
        metadata=client.key,
        timeout=10,
    )


async def until_refused(
    stubs: list[requests_pb2_grpc.RequestServiceStub], client: Client
) -> tuple[int, grpc.aio.AioRpcError]:
    """Creates requests, taking turns over `stubs`, until one is refused (bounded): how many
    got through first, and the refusal."""
    for index in range(4 * BASIC.request_burst):
        try:
            await create(stubs[index % len(stubs)], client)
        except grpc.aio.AioRpcError as error:
            return index, error
    raise AssertionError(f"{4 * BASIC.request_burst} requests in a row were all accepted")


async def test_a_client_over_its_rate_is_refused_with_retry_info(client: Client) -> None:
    basic = await make_client(client.mesh, tier=common_pb2.TIER_BASIC)
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as channel:
        stub = requests_pb2_grpc.RequestServiceStub(channel)
        accepted, refused = await until_refused([stub], basic)
        # The burst, plus what refilled (1 a second) while those calls were made.
        assert accepted >= BASIC.request_burst, accepted
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason(refused) == "RATE_LIMITED"
        [retry] = details(refused, error_details_pb2.RetryInfo)
        delay = convert.seconds(retry.retry_delay)
        assert 0 < delay <= 1 / BASIC.requests_per_second
        # Staff acting for the client do not draw on its bucket; the client waits as told.
        await stub.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(
                    topic="Rates", granularity=1, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
                ),
                client_id=basic.client_id,
            ),
            metadata=client.admin,
            timeout=10,
        )
        await asyncio.sleep(delay)
        await create(stub, basic)


async def test_kam_replicas_on_postgresql_share_one_bucket(
    tmp_path: Path, postgres_url: str
) -> None:
    base = Settings(storage=StorageSettings(database_url=postgres_url))
    mesh = await start_mesh(tmp_path, base)
    second = await serve_kam(mesh.credentials.kam_settings(base, tmp_path / "kam-2"))
    try:
        basic = await make_client(mesh, tier=common_pb2.TIER_BASIC)
        first_channel = grpc.aio.insecure_channel(mesh.kam.address)
        second_channel = grpc.aio.insecure_channel(second.address)
        async with first_channel, second_channel:
            stubs = [
                requests_pb2_grpc.RequestServiceStub(first_channel),
                requests_pb2_grpc.RequestServiceStub(second_channel),
            ]
            accepted, refused = await until_refused(stubs, basic)
        assert reason(refused) == "RATE_LIMITED"
        # One bucket for both replicas: about one burst in all, not one burst each.
        assert BASIC.request_burst <= accepted < 2 * BASIC.request_burst, accepted
    finally:
        await second.stop(0)
        await mesh.stop()
