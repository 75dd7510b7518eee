"""Orchestrator test helpers: master templates with chosen policies, scripted workers, and a
way to run an execution and collect its event log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from sqlalchemy.orm import Session

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_mesh.inprocess import InProcessMesh
from kam_server import models as kam_models
from tests.common import Client
from tests.orchestrator.scripted_worker import ScriptedWorker, Step


def stage(
    order: int = 1,
    capability: str = "scripted",
    *,
    timeout_s: float = 10.0,
    max_attempts: int = 3,
    min_quality: float = 0.0,
) -> dict[str, Any]:
    return {
        "order": order,
        "name": f"stage{order}",
        "capability": capability,
        "action": "run",
        "structure_template": "course",
        "params": {},
        "timeout_s": timeout_s,
        "min_quality_score": min_quality,
        "retry_policy": {
            "max_attempts": max_attempts,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.2,
            "backoff_multiplier": 2.0,
            "non_retryable_errors": ["INVALID_INPUT"],
        },
    }


async def add_template(
    mesh: InProcessMesh, name: str, stages: list[dict[str, Any]], execution_timeout_s: float = 0.0
) -> None:
    def add(session: Session) -> None:
        session.add(
            kam_models.MasterTemplate(
                name=name,
                version=1,
                description="test template",
                structure_type="course",
                stages=stages,
                allowed_tiers=[],
                cost_estimate_usd=0.01,
                execution_timeout_s=execution_timeout_s,
            )
        )

    await mesh.kam.db.run(add)


class Runner:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.channel = grpc.aio.insecure_channel(client.mesh.orchestrator.address)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)

    async def start(
        self, template: str, priority: int = common_pb2.PRIORITY_NORMAL, concurrency: int = 0
    ) -> str:
        response = await self.stub.ExecutePipeline(
            orchestrator_pb2.ExecutePipelineRequest(
                template_name=template,
                client_id=self.client.client_id,
                priority=priority,
                spec=common_pb2.ContentSpec(
                    topic="Testing", granularity=2, structure_type=common_pb2.STRUCTURE_TYPE_COURSE
                ),
                client_concurrency_limit=concurrency,
            ),
            metadata=self.client.admin,
            timeout=10,
        )
        return response.execution.execution_id

    async def events(
        self, execution_id: str, after: int = 0, deadline: float = 30
    ) -> list[orchestrator_pb2.ExecutionEvent]:
        call = self.stub.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id, after_sequence=after),
            metadata=self.client.admin,
            timeout=deadline,
        )
        return [message.event async for message in call]

    async def get(self, execution_id: str) -> orchestrator_pb2.Execution:
        response = await self.stub.GetExecution(
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
            metadata=self.client.admin,
            timeout=10,
        )
        return response.execution

    async def run(self, template: str) -> orchestrator_pb2.Execution:
        execution_id = await self.start(template)
        await self.events(execution_id)
        return await self.get(execution_id)


@pytest.fixture
async def runner(client: Client) -> AsyncIterator[Runner]:
    runner = Runner(client)
    yield runner
    await runner.channel.close()


@pytest.fixture
async def workers(client: Client) -> AsyncIterator[Callable[..., Any]]:
    started: list[ScriptedWorker] = []

    async def make(
        worker_id: str,
        steps: list[Step] | None = None,
        default: Step | None = None,
        capability: str = "scripted",
        max_concurrency: int = 4,
    ) -> ScriptedWorker:
        worker = ScriptedWorker(worker_id, capability, list(steps or []), default or Step())
        await worker.start(client.mesh, client.admin, max_concurrency)
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.stop()
