"""The main job end to end through real servers: request → execution → granulator → structure."""

from __future__ import annotations

import grpc

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from tests.common import Client, submit


async def test_course_request_runs_end_to_end_with_live_progress(client: Client) -> None:
    mesh = client.mesh
    async with (
        grpc.aio.insecure_channel(mesh.kam.address) as kam,
        grpc.aio.insecure_channel(mesh.orchestrator.address) as orchestrator,
        grpc.aio.insecure_channel(mesh.granulators[0].address) as granulator,
    ):
        request_id, execution_id = await submit(
            kam,
            client,
            common_pb2.ContentSpec(
                topic="AI Development",
                structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                audience="beginners",
                granularity=3,
            ),
        )
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        events = []
        watch = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
            metadata=client.key,
            timeout=30,
        )
        async for message in watch:
            events.append(message.event)

        types = [orchestrator_pb2.EventType.Name(e.type) for e in events]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert types[0] == "EVENT_TYPE_EXECUTION_QUEUED"
        assert "EVENT_TYPE_STAGE_ACCEPTED" in types
        assert "EVENT_TYPE_STAGE_PROGRESS" in types
        assert types[-1] == "EVENT_TYPE_EXECUTION_SUCCEEDED"
        assert events[-1].progress == 1.0
        assert events[-1].usage.provider == "offline"

        execution = (
            await orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                metadata=client.key,
                timeout=10,
            )
        ).execution
        assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
        assert execution.stages[0].quality.score >= 80

        structure = await granulator_pb2_grpc.GranulatorServiceStub(granulator).GetStructure(
            granulator_pb2.GetStructureRequest(job_id=execution.job_id),
            metadata=client.key,
            timeout=10,
        )
        kinds = [e.kind for e in structure.elements]
        assert kinds[0] == "course" and "module" in kinds and "lesson" in kinds
        assert "AI Development" in structure.elements[0].title

        # KAM learns the outcome from the orchestrator and settles the budget.
        request = (
            await requests.GetRequest(
                requests_pb2.GetRequestRequest(request_id=request_id),
                metadata=client.key,
                timeout=10,
            )
        ).request
        for _ in range(50):
            if request.status == requests_pb2.REQUEST_STATUS_COMPLETED:
                break
            import asyncio

            await asyncio.sleep(0.1)
            request = (
                await requests.GetRequest(
                    requests_pb2.GetRequestRequest(request_id=request_id),
                    metadata=client.key,
                    timeout=10,
                )
            ).request
        assert request.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert request.job_id == execution.job_id
        assert request.usage.provider == "offline"
