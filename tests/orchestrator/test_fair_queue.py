"""Fair waiting instead of refusal, through KAM on real servers: executions over a client's tier
limit are accepted and wait for the client's turn, at most the limit run at once (20 of a
standard client, 120 of an enterprise one, and with two orchestrator replicas on PostgreSQL),
and a client with many executions queued does not keep another client's one waiting behind them
all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core import convert
from bitware_core.config import PeerSettings, QueueSettings, Settings, StorageSettings
from bitware_core.tiers import TIER_LIMITS
from bitware_mesh.inprocess import InProcessMesh, MeshCredentials
from kam_server.server import serve as serve_kam
from orchestrator_server.server import serve as serve_orchestrator
from tests.common import Client, make_client
from tests.orchestrator.conftest import add_template, stage
from tests.orchestrator.scripted_worker import ScriptedWorker, Step

Workers = Callable[..., Any]
T = TypeVar("T")

#: Standard tier: three executions at once (bitware_core.tiers).
STANDARD_LIMIT = 3


async def admitted(call: Callable[[], Awaitable[T]]) -> T:
    """Makes a call, waiting out the client's rate limit as a well-behaved client does: after
    the delay its RetryInfo gives. Any other error fails the test."""
    for _ in range(100):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            status = rpc_status.from_call(error)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and status, error
            delays = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            assert delays, status
            info = error_details_pb2.RetryInfo()
            delays[0].Unpack(info)
            await asyncio.sleep(convert.seconds(info.retry_delay))
    raise AssertionError("still rate limited after 100 tries")


async def submit(requests: requests_pb2_grpc.RequestServiceStub, client: Client) -> str:
    """Creates and executes a request of the one-stage template; returns its execution id."""
    created = await admitted(
        lambda: requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(topic="Fairness", granularity=2),
                master_template="one_stage",
            ),
            metadata=client.key,
            timeout=10,
        )
    )
    executed = await admitted(
        lambda: requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
            metadata=client.key,
            timeout=10,
        )
    )
    return executed.execution_id


async def finished(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub, client: Client, ids: list[str]
) -> list[orchestrator_pb2.Execution]:
    """Waits (bounded) until every execution has ended; returns them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while True:
        done = [
            (
                await stub.GetExecution(
                    orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                    metadata=client.admin,
                    timeout=10,
                )
            ).execution
            for execution_id in ids
        ]
        if all(e.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED for e in done):
            return done
        assert loop.time() < deadline, [
            orchestrator_pb2.ExecutionStatus.Name(e.status) for e in done
        ]
        await asyncio.sleep(0.2)


async def test_executions_over_the_tier_limit_wait_and_at_most_the_limit_run_at_once(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    kam = grpc.aio.insecure_channel(client.mesh.kam.address)
    orchestrator = grpc.aio.insecure_channel(client.mesh.orchestrator.address)
    async with kam, orchestrator:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        ids = [await submit(requests, client) for _ in range(20)]  # all accepted, none refused
        # Room for more than the limit: only the tier limit holds the client back.
        worker = await workers("wide", default=Step(delay=0.15), max_concurrency=8)
        executions = await finished(
            orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator), client, ids
        )
        assert len(executions) == 20
        for request in (
            await requests.ListRequests(
                requests_pb2.ListRequestsRequest(), metadata=client.key, timeout=10
            )
        ).requests:
            assert request.status in (
                requests_pb2.REQUEST_STATUS_RUNNING,  # the outcome may still be on its way
                requests_pb2.REQUEST_STATUS_COMPLETED,
            )
    assert len(worker.processed) == 20
    assert worker.peak[client.client_id] == STANDARD_LIMIT


async def test_a_client_with_one_execution_is_not_starved_by_one_with_many(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    other = await make_client(client.mesh)
    kam = grpc.aio.insecure_channel(client.mesh.kam.address)
    orchestrator = grpc.aio.insecure_channel(client.mesh.orchestrator.address)
    async with kam, orchestrator:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        # The busy client queues 20 before the other queues its one, and only then a worker
        # comes: in arrival order the single execution would run last.
        busy = [await submit(requests, client) for _ in range(20)]
        single = await submit(requests, other)
        # Fewer worker slots than the busy client's limit: only fair ordering lets the other in.
        await workers("narrow", default=Step(delay=0.2), max_concurrency=2)
        [lone] = await finished(stub, client, [single])
        many = await finished(stub, client, busy)
    ended_before = [e for e in many if e.end_time.ToDatetime() < lone.end_time.ToDatetime()]
    # It ran after the busy client's ready executions (at most its limit), not after all 20.
    assert len(ended_before) <= STANDARD_LIMIT + 1, len(ended_before)


async def test_two_replicas_on_postgresql_keep_a_client_within_its_limit(
    tmp_path: Path, postgres_url: str
) -> None:
    credentials = MeshCredentials.generate(granulators=0)
    base = Settings(
        storage=StorageSettings(database_url=postgres_url),
        queue=QueueSettings(heartbeat_interval=0.5),
    )
    kam = await serve_kam(credentials.kam_settings(base, tmp_path))
    replicas = [
        await serve_orchestrator(
            replace(
                credentials.settings_for(base, "orchestrator"),
                storage=replace(base.storage, data_dir=tmp_path),
                peers=PeerSettings(kam_address=kam.address),
            )
        )
        for _ in range(2)
    ]
    kam.orchestrator.connect(replicas[0].address)
    mesh = InProcessMesh(kam, replicas[0], [], credentials)
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    worker = None
    try:
        client = await make_client(mesh)
        await add_template(mesh, "one_stage", [stage()])
        stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
        # As KAM starts them: the client's id and its tier's limit, on either replica.
        ids = [
            (
                await stubs[index % 2].ExecutePipeline(
                    orchestrator_pb2.ExecutePipelineRequest(
                        template_name="one_stage",
                        client_id=client.client_id,
                        spec=common_pb2.ContentSpec(topic="Replicas", granularity=1),
                        client_concurrency_limit=STANDARD_LIMIT,
                    ),
                    metadata=client.admin,
                    timeout=10,
                )
            ).execution.execution_id
            for index in range(30)
        ]
        # Both replicas offer to the one worker (they share its registry row and its slots).
        worker = ScriptedWorker("shared", "scripted", [], Step(delay=0.1))
        await worker.start(mesh, client.admin, max_concurrency=8)
        await finished(stubs[1], client, ids)
    finally:
        if worker is not None:
            await worker.stop()
        for channel in channels:
            await channel.close()
        for replica in replicas:
            await replica.stop(0)
        await kam.stop(0)
    assert len(worker.processed) == 30
    assert worker.peak[client.client_id] == STANDARD_LIMIT


async def test_120_executions_of_one_enterprise_client_complete_within_its_limit(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    enterprise = await make_client(client.mesh, tier=common_pb2.TIER_ENTERPRISE, budget=1000.0)
    limit = TIER_LIMITS["enterprise"].max_concurrent_executions
    kam = grpc.aio.insecure_channel(client.mesh.kam.address)
    orchestrator = grpc.aio.insecure_channel(client.mesh.orchestrator.address)
    async with kam, orchestrator:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        ids: list[str] = []
        for _ in range(6):  # 120 in all, 20 at a time
            ids += await asyncio.gather(*(submit(requests, enterprise) for _ in range(20)))
        assert len(set(ids)) == 120  # every one accepted, none refused
        # Room for more than the limit: only the tier limit holds the client back.
        worker = await workers("wide", default=Step(delay=0.5), max_concurrency=limit + 14)
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:
            listed = await stub.ListExecutions(
                orchestrator_pb2.ListExecutionsRequest(
                    client_id=enterprise.client_id,
                    status=orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED,
                    page_size=200,
                ),
                metadata=client.admin,
                timeout=10,
            )
            if len(listed.executions) == 120:
                break
            assert loop.time() < deadline, len(listed.executions)
            await asyncio.sleep(0.5)
    assert len(worker.processed) == 120
    assert worker.peak[enterprise.client_id] == limit
