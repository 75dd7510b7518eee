"""kill -9 the orchestrator mid-run and start it again: every execution completes, no stage
runs twice to completion, and no event is lost."""

from __future__ import annotations

from pathlib import Path

import grpc

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import Settings
from bitware_mesh.inprocess import InProcessMesh, MeshCredentials
from kam_server.server import serve as serve_kam
from tests.common import eventually, free_port, make_client, start_server_process
from tests.orchestrator.conftest import add_template, stage
from tests.orchestrator.scripted_worker import ScriptedWorker, Step


async def test_orchestrator_killed_mid_run_recovers_every_execution(tmp_path: Path) -> None:
    credentials = MeshCredentials.generate(granulators=0)
    kam = await serve_kam(credentials.kam_settings(Settings(), tmp_path))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {
        "BITWARE_PORT": str(port),
        "BITWARE_DATA_DIR": str(tmp_path),
        "BITWARE_KAM_ADDRESS": kam.address,
        "BITWARE_WORKER_ID": "orchestrator",
        "BITWARE_WORKER_TOKEN": credentials.tokens["orchestrator"],
        "BITWARE_LEASE_SECONDS": "2",
        "BITWARE_HEARTBEAT_TIMEOUT": "30",
    }
    process = await start_server_process("orchestrator", env)
    kam.orchestrator.connect(address)
    # The test talks to the real orchestrator process; InProcessMesh only carries addresses.
    mesh = InProcessMesh(kam, kam, [], credentials)  # type: ignore[arg-type]
    mesh.orchestrator = type("Remote", (), {"address": address})()  # type: ignore[assignment]
    worker = ScriptedWorker("survivor", "scripted", default=Step(delay=1.0))
    try:
        client = await make_client(mesh)
        await add_template(mesh, "slow", [stage(1), stage(2)])
        await worker.start(mesh, client.admin, max_concurrency=3)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            ids = []
            for _ in range(5):
                response = await stub.ExecutePipeline(
                    orchestrator_pb2.ExecutePipelineRequest(
                        template_name="slow",
                        client_id=client.client_id,
                        spec=common_pb2.ContentSpec(topic="Crashes", granularity=1),
                    ),
                    metadata=client.admin,
                    timeout=10,
                )
                ids.append(response.execution.execution_id)
            await eventually(lambda: len(worker.processed) >= 3)
        process.kill()  # kill -9, mid-run
        await process.wait()
        process = await start_server_process("orchestrator", env)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            for execution_id in ids:
                events = [
                    m.event
                    async for m in stub.WatchExecution(
                        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                        # Channels share subchannels: wait out the backoff left by the killed one.
                        metadata=client.admin,
                        timeout=60,
                        wait_for_ready=True,
                    )
                ]
                assert [e.sequence for e in events] == list(range(1, len(events) + 1))
                assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
        completed = [(r.stage.stage_id, r.stage.attempt) for r in worker.processed]
        assert len({stage_id for stage_id, _ in completed}) == 10  # 5 executions × 2 stages
        assert len(completed) == 10  # no stage was worked on twice
    finally:
        await worker.stop()
        if process.returncode is None:
            process.terminate()
            await process.wait()
        await kam.stop(0.5)
