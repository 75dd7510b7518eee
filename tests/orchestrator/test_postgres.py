"""Two orchestrator replicas and two granulators on the machine's real PostgreSQL share one
queue (SELECT … FOR UPDATE SKIP LOCKED) and one event log (LISTEN/NOTIFY): 200 executions all
complete, none runs a stage twice, and a watcher on either replica sees every event."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import (
    GranulatorSettings,
    PeerSettings,
    QueueSettings,
    Settings,
    StorageSettings,
)
from bitware_mesh.inprocess import InProcessMesh, MeshCredentials
from granulator_server.server import serve as serve_granulator
from kam_server.server import serve as serve_kam
from orchestrator_server.server import serve as serve_orchestrator
from tests.common import make_client

EXECUTIONS = 200


async def test_two_replicas_and_two_granulators_share_the_queue(
    tmp_path: Path, postgres_url: str
) -> None:
    credentials = MeshCredentials.generate(granulators=2)
    base = Settings(
        storage=StorageSettings(database_url=postgres_url),
        queue=QueueSettings(heartbeat_interval=0.5),
        granulator=GranulatorSettings(max_concurrent_jobs=8),
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
    granulators = [
        await serve_granulator(
            replace(
                credentials.settings_for(base, f"granulator-{i + 1}"),
                storage=replace(base.storage, data_dir=tmp_path / str(i)),
                peers=PeerSettings(
                    kam_address=kam.address, orchestrator_address=replicas[i].address
                ),
            )
        )
        for i in range(2)
    ]
    mesh = InProcessMesh(kam, replicas[0], granulators, credentials)
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    try:
        client = await make_client(mesh, tier=common_pb2.TIER_ENTERPRISE, budget=1000)
        stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
        ids = []
        for index in range(EXECUTIONS):
            response = await stubs[index % 2].ExecutePipeline(
                orchestrator_pb2.ExecutePipelineRequest(
                    template_name="quiz_standard",
                    client_id=client.client_id,
                    spec=common_pb2.ContentSpec(
                        topic=f"Topic {index}",
                        granularity=1,
                        structure_type=common_pb2.STRUCTURE_TYPE_QUIZ,
                    ),
                ),
                metadata=client.admin,
                timeout=10,
            )
            ids.append(response.execution.execution_id)

        limit = asyncio.Semaphore(40)

        async def watch(index: int, execution_id: str) -> list[orchestrator_pb2.ExecutionEvent]:
            async with limit:  # watch on the replica that did not create it
                call = stubs[(index + 1) % 2].WatchExecution(
                    orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                    metadata=client.admin,
                    timeout=120,
                )
                return [message.event async for message in call]

        logs = await asyncio.gather(*(watch(i, e) for i, e in enumerate(ids)))
        for events in logs:
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED

        engine = create_engine(postgres_url)
        with engine.connect() as connection:
            twice = connection.execute(
                text(
                    "SELECT execution_id, stage_id FROM jobs WHERE status = 'completed' "
                    "GROUP BY execution_id, stage_id HAVING count(*) > 1"
                )
            ).all()
            completed = connection.scalar(
                text("SELECT count(*) FROM jobs WHERE status = 'completed'")
            )
            by_worker = dict(
                connection.execute(
                    text(
                        "SELECT worker_id, count(*) FROM attempts WHERE status = 'succeeded' "
                        "GROUP BY worker_id"
                    )
                ).all()
            )
        engine.dispose()
        assert twice == []
        assert completed == EXECUTIONS
        assert set(by_worker) == {"granulator-1", "granulator-2"}  # both workers did work
    finally:
        for channel in channels:
            await channel.close()
        for server in [*granulators, *replicas, kam]:
            await server.stop(0.5)
