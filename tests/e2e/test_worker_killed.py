"""kill -9 a granulator process mid-generation: the orchestrator offers the stage to the other
granulator, the execution completes, and exactly one result is stored for the stage."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
from sqlalchemy import create_engine, text

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import PeerSettings, QueueSettings, Settings, StorageSettings
from bitware_mesh.inprocess import InProcessMesh, MeshCredentials
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from kam_server.server import serve as serve_kam
from orchestrator_server.server import serve as serve_orchestrator
from tests.common import make_client, start_server_process, submit
from tests.granulator.fake_openai import FakeOpenAI, reply

COURSE = next(t for t in SEED_TEMPLATES if t.structure_type == "course")


async def test_killed_granulator_stage_completes_once_on_the_other(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    credentials = MeshCredentials.generate(granulators=2)
    kam = await serve_kam(credentials.kam_settings(Settings(), tmp_path))
    orchestrator = await serve_orchestrator(
        replace(
            credentials.settings_for(
                Settings(queue=QueueSettings(heartbeat_interval=0.5)), "orchestrator"
            ),
            storage=StorageSettings(data_dir=tmp_path),
            peers=PeerSettings(kam_address=kam.address),
        )
    )
    kam.orchestrator.connect(orchestrator.address)
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        for worker_id in ("granulator-1", "granulator-2"):
            processes[worker_id] = await start_server_process(
                "granulator",
                {
                    "BITWARE_PORT": "0",  # it registers the port it bound
                    "BITWARE_DATA_DIR": str(tmp_path / worker_id),
                    "BITWARE_KAM_ADDRESS": kam.address,
                    "BITWARE_ORCHESTRATOR_ADDRESS": orchestrator.address,
                    "BITWARE_WORKER_ID": worker_id,
                    "BITWARE_WORKER_TOKEN": credentials.tokens[worker_id],
                    "BITWARE_OPENAI_BASE_URL": fake_openai.base_url,
                    "BITWARE_OPENAI_API_KEY": "test-key",
                },
            )
        mesh = InProcessMesh(kam, orchestrator, [], credentials)
        client = await make_client(mesh)
        document = generate_offline(COURSE, "Resilience", "engineers", 2, {})
        fake_openai.add(reply(document, delay=60))  # the first worker to ask hangs …
        fake_openai.add(reply(document))  # … the second is answered at once
        async with (
            grpc.aio.insecure_channel(kam.address) as kam_channel,
            grpc.aio.insecure_channel(orchestrator.address) as orchestrator_channel,
        ):
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
            _, execution_id = await submit(
                kam_channel,
                client,
                common_pb2.ContentSpec(
                    topic="Resilience",
                    audience="engineers",
                    granularity=2,
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                ),
            )
            await asyncio.wait_for(fake_openai.wait_for_requests(1), 30)
            running = await stub.GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                metadata=client.key,
                timeout=10,
            )
            victim = running.execution.stages[0].attempts[-1].worker_id
            processes[victim].kill()  # kill -9, mid-generation
            await processes[victim].wait()
            events = [
                m.event
                async for m in stub.WatchExecution(
                    orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                    metadata=client.key,
                    timeout=60,
                )
            ]
            done = (
                await stub.GetExecution(
                    orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                    metadata=client.key,
                    timeout=10,
                )
            ).execution
        assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
        survivor = next(w for w in processes if w != victim)
        assert done.stages[0].attempts[-1].worker_id == survivor
        completed = {}
        for worker_id in processes:
            engine = create_engine(f"sqlite:///{tmp_path / worker_id / 'granulator.db'}")
            with engine.connect() as connection:
                completed[worker_id] = (
                    connection.execute(
                        text(
                            "SELECT id FROM jobs WHERE status = 'completed' AND stage_id = :stage"
                        ),
                        {"stage": done.stages[0].stage_id},
                    )
                    .scalars()
                    .all()
                )
            engine.dispose()
        assert completed[victim] == [] and completed[survivor] == [done.job_id]
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.terminate()
                await process.wait()
        await orchestrator.stop(0.5)
        await kam.stop(0.5)
