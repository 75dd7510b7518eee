"""The worker protocol's messages with the real granulator: the orchestrator asks for progress
in batches, so a course stage's progress events reach the execution's log whole in fewer
WatchProgress messages than events."""

from __future__ import annotations

import grpc
from prometheus_client import generate_latest

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from tests.common import Client, submit
from tests.metrics import stream_messages, value

RUNS = 3
WATCH_PROGRESS = "/bitware.worker.v1.WorkerService/WatchProgress"


async def test_course_progress_arrives_whole_in_fewer_messages_than_events(
    client: Client,
) -> None:
    mesh = client.mesh
    progress_events = 0
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
    ):
        for run in range(RUNS):
            _, execution_id = await submit(
                kam,
                client,
                common_pb2.ContentSpec(
                    topic=f"Topic {run}",
                    structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    audience="beginners",
                    granularity=2,
                ),
            )
            watch = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).WatchExecution(
                orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                metadata=client.key,
                timeout=30,
            )
            events = [message.event async for message in watch]
            assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED
            phases = [
                e.message for e in events if e.type == orchestrator_pb2.EVENT_TYPE_STAGE_PROGRESS
            ]
            assert phases[0] == "offer accepted" and phases[-1] == "completed", phases
            progress_events += len(phases)

    # What the granulator itself counts: the streams it served and the messages it sent.
    granulator = mesh.granulators[0].metrics
    streams = value(
        generate_latest(granulator).decode(), "bitware_rpc_total", method=WATCH_PROGRESS
    )
    messages = stream_messages(granulator, WATCH_PROGRESS)
    assert streams == RUNS
    # At least the prompt-built and first generating events, added together, travel together.
    assert messages <= progress_events - RUNS
