"""On PostgreSQL, KAM serialises one client's budget decisions: of several requests executed at
the same moment, only as many as the budget covers start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, requests_pb2, requests_pb2_grpc
from bitware_core.config import KamSettings, Settings, StorageSettings
from bitware_mesh.inprocess import start_mesh
from tests.common import PARKED_CAPABILITY, make_client
from tests.kam.helpers import kam, parked_template


async def test_concurrent_executions_cannot_overspend_the_budget(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = Settings(
        storage=StorageSettings(database_url=postgres_url),
        kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
    )
    mesh = await start_mesh(tmp_path, settings)
    try:
        # Each execution reserves $0.05 and waits in the queue (no worker has its capability), so
        # none settles during the test: a $0.12 budget covers two executions, not five.
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=0.12)
        async with kam(mesh) as k:
            await k.create_template(client.admin, parked_template("held", cost=0.05))
            ids = [(await k.create_request(client.key, "held")).request_id for _ in range(5)]

            async def execute(request_id: str) -> grpc.StatusCode:
                try:
                    await k.requests.ExecuteRequest(
                        requests_pb2.ExecuteRequestRequest(request_id=request_id),
                        metadata=client.key,
                        timeout=20,
                    )
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            codes = await asyncio.gather(*(execute(i) for i in ids))
        assert sorted(code.name for code in codes) == ["OK", "OK"] + ["RESOURCE_EXHAUSTED"] * 3
    finally:
        await mesh.stop()


async def test_charges_settling_at_once_alert_each_budget_threshold_once(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = Settings(
        storage=StorageSettings(database_url=postgres_url),
        kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
    )
    mesh = await start_mesh(tmp_path, settings)
    try:
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=1.0)
        async with kam(mesh) as k:
            await k.create_template(client.admin, parked_template("split", cost=0.01))
            pairs = []
            for _ in range(4):
                request = await k.create_request(client.key, "split")
                pairs.append((request.request_id, await k.execute(client.key, request.request_id)))
            # Four charges of $0.30 settle at once: $1.20 crosses 80 % and 100 % of $1.
            await asyncio.gather(
                *(
                    k.requests.RecordExecutionOutcome(
                        requests_pb2.RecordExecutionOutcomeRequest(
                            request_id=request_id,
                            execution_id=execution_id,
                            status=requests_pb2.REQUEST_STATUS_COMPLETED,
                            usage=common_pb2.Usage(cost_micros=300_000),
                        ),
                        metadata=client.worker("orchestrator"),
                    )
                    for request_id, execution_id in pairs
                )
            )
            usage = await k.clients.GetUsage(accounts_pb2.GetUsageRequest(), metadata=client.key)
        assert round(usage.spent_usd * 1_000_000) == 1_200_000
        assert [alert.percent for alert in usage.alerts] == [80, 100]
    finally:
        await mesh.stop()


async def test_one_clients_creates_and_executes_at_once_never_deadlock(
    tmp_path: Path, postgres_url: str
) -> None:
    """CreateRequest and ExecuteRequest of one client both lock its client row and its rate
    bucket; taken in different orders they deadlocked on PostgreSQL (INTERNAL)."""
    mesh = await start_mesh(tmp_path, Settings(storage=StorageSettings(database_url=postgres_url)))
    try:
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=100.0)
        async with grpc.aio.insecure_channel(mesh.kam.address) as channel:
            stub = requests_pb2_grpc.RequestServiceStub(channel)

            async def create(index: int) -> str:
                created = await stub.CreateRequest(
                    requests_pb2.CreateRequestRequest(
                        spec=common_pb2.ContentSpec(
                            topic=f"Locks {index}",
                            granularity=1,
                            structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                        )
                    ),
                    metadata=client.key,
                    timeout=20,
                )
                return str(created.request.request_id)

            async def create_and_execute(index: int) -> None:
                await stub.ExecuteRequest(
                    requests_pb2.ExecuteRequestRequest(request_id=await create(index)),
                    metadata=client.key,
                    timeout=20,
                )

            for round_ in range(3):
                await asyncio.gather(*(create_and_execute(round_ * 10 + i) for i in range(10)))
    finally:
        await mesh.stop()
