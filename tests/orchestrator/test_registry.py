"""The worker registry: health checks, draining and leaving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bitware.orchestrator.v1 import registry_pb2, registry_pb2_grpc
from tests.common import Client, eventually
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]


async def worker_state(client: Client, worker_id: str) -> int:
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        listed = await registry_pb2_grpc.WorkerRegistryServiceStub(channel).ListWorkers(
            registry_pb2.ListWorkersRequest(), metadata=client.admin, timeout=5
        )
    return next(w.state for w in listed.workers if w.worker_id == worker_id)


async def test_a_worker_answering_not_serving_gets_no_offers(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    stopping = await workers("stopping")
    await stopping.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    dispatcher = client.mesh.orchestrator.dispatcher
    await eventually(lambda: "stopping" in dispatcher.not_serving, within=6)
    serving = await workers("serving")
    for _ in range(3):
        await runner.run("one_stage")
    assert not stopping.offers and len(serving.processed) == 3
    await stopping.health.set("", health_pb2.HealthCheckResponse.SERVING)
    await eventually(lambda: "stopping" not in dispatcher.not_serving, within=6)


async def test_a_draining_worker_finishes_its_stage_then_leaves(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage()])
    leaving = await workers("leaving", default=Step(delay=1.0))
    first = await runner.start("one_stage")
    await eventually(lambda: bool(leaving.processed))
    drained = await leaving.leave(drain=True)
    assert drained.state == registry_pb2.WORKER_STATE_DRAINING
    staying = await workers("staying")
    second = await runner.start("one_stage")
    for execution_id in (first, second):
        await runner.events(execution_id)
    assert [o.stage.execution_id for o in leaving.offers] == [first]  # no new offers
    assert [o.stage.execution_id for o in staying.offers] == [second]
    for _ in range(50):
        if await worker_state(client, "leaving") == registry_pb2.WORKER_STATE_DEREGISTERED:
            break
        await asyncio.sleep(0.2)
    assert await worker_state(client, "leaving") == registry_pb2.WORKER_STATE_DEREGISTERED


async def test_a_worker_may_not_deregister_another(client: Client, workers: Workers) -> None:
    await workers("victim")
    intruder = await workers("intruder")
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        stub = registry_pb2_grpc.WorkerRegistryServiceStub(channel)
        try:
            await stub.DeregisterWorker(
                registry_pb2.DeregisterWorkerRequest(worker_id="victim"),
                metadata=intruder.metadata,
                timeout=5,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        else:
            raise AssertionError("expected PERMISSION_DENIED")


async def test_a_granulator_an_admin_drained_stays_out(client: Client) -> None:
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        stub = registry_pb2_grpc.WorkerRegistryServiceStub(channel)
        drained = await stub.DeregisterWorker(
            registry_pb2.DeregisterWorkerRequest(worker_id="granulator-1", drain=True),
            metadata=client.admin,
            timeout=5,
        )
        assert drained.worker.state == registry_pb2.WORKER_STATE_DRAINING
    granulator = client.mesh.granulators[0]
    await eventually(lambda: granulator.worker.slots.draining, within=10)
    await asyncio.sleep(1.5)  # heartbeats would have brought it back by now
    assert await worker_state(client, "granulator-1") == registry_pb2.WORKER_STATE_DEREGISTERED
