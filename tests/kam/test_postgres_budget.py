"""On PostgreSQL, KAM serialises one client's budget decisions: of several requests executed at
the same moment, only as many as the budget covers start."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware_core.config import Settings
from bitware_core.mesh import start_mesh
from tests.conftest import make_client


async def test_concurrent_executions_cannot_overspend_the_budget(
    tmp_path: Path, postgres_url: str
) -> None:
    mesh = await start_mesh(tmp_path, replace(Settings(), database_url=postgres_url))
    try:
        # course_standard reserves $0.05: a $0.12 budget covers two executions, not five.
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=0.12)
        async with grpc.aio.insecure_channel(mesh.kam.address) as channel:
            stub = requests_pb2_grpc.RequestServiceStub(channel)
            ids = []
            for index in range(5):
                created = await stub.CreateRequest(
                    requests_pb2.CreateRequestRequest(
                        spec=common_pb2.ContentSpec(
                            topic=f"Budget {index}",
                            granularity=1,
                            structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                        )
                    ),
                    metadata=client.key,
                    timeout=10,
                )
                ids.append(created.request.request_id)

            async def execute(request_id: str) -> grpc.StatusCode:
                try:
                    await stub.ExecuteRequest(
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
