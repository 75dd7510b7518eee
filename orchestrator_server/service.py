"""The orchestrator's gRPC handlers: thin translations between protobuf and the logic."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from sqlalchemy.orm import Session

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware_core import convert
from bitware_core.auth import current_principal
from bitware_core.context import execution_id_var
from bitware_core.db import Database
from bitware_core.domain import Quality, Usage
from bitware_core.errors import FieldViolation, InvalidArgument
from bitware_core.server import Context
from orchestrator_server import executions, models, queue, registry
from orchestrator_server.dispatch import Dispatcher
from orchestrator_server.events import EventHub
from orchestrator_server.kam_client import KamClient


def _enum(enum: Any, prefix: str, name: str) -> Any:
    return convert.enum_value(enum, name, prefix)


def _error(error: dict[str, Any]) -> orchestrator_pb2.ErrorDetail | None:
    if not error:
        return None
    return orchestrator_pb2.ErrorDetail(
        reason=str(error.get("reason", "")),
        message=str(error.get("message", "")),
        retryable=bool(error.get("retryable", False)),
    )


def execution_to_proto(
    row: models.Execution,
    stages: list[models.Stage] | None = None,
    attempts: list[models.Attempt] | None = None,
    outputs: bool = True,
) -> orchestrator_pb2.Execution:
    by_stage: dict[str, list[models.Attempt]] = {}
    for attempt in attempts or []:
        by_stage.setdefault(attempt.stage_id, []).append(attempt)
    done = sum(1 for s in stages or [] if s.status == "succeeded")
    return orchestrator_pb2.Execution(
        execution_id=row.id,
        request_id=row.request_id,
        client_id=row.client_id,
        template_name=row.template_name,
        template_version=row.template_version,
        spec=convert.spec_to_proto(row.spec),
        priority=_enum(common_pb2.Priority, "PRIORITY_", executions.PRIORITY_NAMES[row.priority]),
        status=_enum(orchestrator_pb2.ExecutionStatus, "EXECUTION_STATUS_", row.status),
        stages=[
            orchestrator_pb2.Stage(
                stage_id=s.id,
                order=s.order,
                name=s.name,
                capability=s.capability,
                action=s.action,
                status=_enum(orchestrator_pb2.StageStatus, "STAGE_STATUS_", s.status),
                attempts=[
                    orchestrator_pb2.Attempt(
                        number=a.number,
                        epoch=a.epoch,
                        worker_id=a.worker_id,
                        status=_enum(orchestrator_pb2.AttemptStatus, "ATTEMPT_STATUS_", a.status),
                        start_time=convert.timestamp(a.started_at),
                        end_time=convert.timestamp(a.ended_at),
                        usage=Usage.from_json(a.usage).to_proto(),
                        quality_score=a.quality_score,
                        error=_error(a.error),
                    )
                    for a in by_stage.get(s.id, [])
                ],
                usage=Usage.from_json(s.usage).to_proto(),
                quality=Quality.from_json(s.quality).to_proto() if s.quality else None,
                output=convert.to_struct(s.output) if s.output and outputs else None,
                output_ref=s.output_ref,
                error=_error(s.error),
                job_id=s.job_id,
                start_time=convert.timestamp(s.started_at),
                end_time=convert.timestamp(s.ended_at),
            )
            for s in stages or []
        ],
        usage=Usage.from_json(row.usage).to_proto(),
        job_id=row.job_id,
        error=_error(row.error),
        create_time=convert.timestamp(row.created_at),
        start_time=convert.timestamp(row.started_at),
        end_time=convert.timestamp(row.ended_at),
        last_sequence=row.last_sequence,
        progress=1.0 if row.status == "succeeded" else (done / len(stages) if stages else 0.0),
        retries=row.retries,
    )


def event_to_proto(row: executions.LoggedEvent) -> orchestrator_pb2.ExecutionEvent:
    data = row.data
    return orchestrator_pb2.ExecutionEvent(
        sequence=row.sequence,
        execution_id=row.execution_id,
        time=convert.timestamp(row.at),
        type=_enum(orchestrator_pb2.EventType, "EVENT_TYPE_", row.type),
        stage_id=data.get("stage_id", ""),
        stage_order=data.get("stage_order", 0),
        attempt=data.get("attempt", 0),
        worker_id=data.get("worker_id", ""),
        message=data.get("message", ""),
        progress=data.get("progress", 0.0),
        execution_status=_enum(
            orchestrator_pb2.ExecutionStatus, "EXECUTION_STATUS_", data.get("execution_status", "")
        ),
        stage_status=_enum(
            orchestrator_pb2.StageStatus, "STAGE_STATUS_", data.get("stage_status", "")
        ),
        phase=data.get("phase", ""),
        error=_error(data.get("error", {})),
        usage=Usage.from_json(data["usage"]).to_proto() if data.get("usage") else None,
    )


class OrchestratorHandlers(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, db: Database, hub: EventHub, kam: KamClient, dispatcher: Dispatcher) -> None:
        self.db, self.hub, self.kam, self.dispatcher = db, hub, kam, dispatcher

    async def _full(self, execution_id: str) -> orchestrator_pb2.Execution:
        row, stages, attempts = await self.db.run_tx(
            functools.partial(executions.load_full, execution_id=execution_id)
        )
        return execution_to_proto(row, stages, attempts)

    async def ExecutePipeline(
        self, request: orchestrator_pb2.ExecutePipelineRequest, context: Context
    ) -> orchestrator_pb2.ExecutePipelineResponse:
        if not request.template_name:
            raise InvalidArgument([FieldViolation("template_name", "is required")])
        priority = convert.checked_enum(
            common_pb2.Priority, request.priority, "PRIORITY_", "priority"
        )
        template = await self.kam.template(request.template_name, request.template_version)
        new = executions.NewExecution(
            template=template,
            spec=convert.spec_from_proto(request.spec),
            priority=priority or "normal",
            request_id=request.request_id,
            # Only KAM and admins get here (the access table): they name the client and its
            # limit, which a client could otherwise choose for itself.
            client_id=request.client_id,
            idempotency_key=request.idempotency_key,
            client_concurrency=request.client_concurrency_limit,
        )
        row, stages, attempts = await self.db.run_tx(lambda tx: executions.start(tx, new))
        execution_id_var.set(row.id)  # this call's log line names the execution it started
        self.dispatcher.remember_trace(row.id)
        self.dispatcher.wake.set()
        return orchestrator_pb2.ExecutePipelineResponse(
            execution=execution_to_proto(row, stages, attempts)
        )

    async def GetExecution(
        self, request: orchestrator_pb2.GetExecutionRequest, context: Context
    ) -> orchestrator_pb2.GetExecutionResponse:
        principal = current_principal()
        await self.db.run(lambda s: executions.get(s, principal, request.execution_id))
        return orchestrator_pb2.GetExecutionResponse(
            execution=await self._full(request.execution_id)
        )

    async def ListExecutions(
        self, request: orchestrator_pb2.ListExecutionsRequest, context: Context
    ) -> orchestrator_pb2.ListExecutionsResponse:
        principal = current_principal()
        status = convert.checked_enum(
            orchestrator_pb2.ExecutionStatus, request.status, "EXECUTION_STATUS_", "status"
        )

        def work(
            s: Session,
        ) -> tuple[
            list[models.Execution],
            str,
            dict[str, list[models.Stage]],
            dict[str, list[models.Attempt]],
        ]:
            rows, token = executions.list_executions(
                s, principal, request.page_size, request.page_token, status, request.client_id
            )
            if not request.include_stages:
                return rows, token, {}, {}
            return rows, token, *executions.timelines(s, [row.id for row in rows])

        rows, token, stages, attempts = await self.db.run(work)
        return orchestrator_pb2.ListExecutionsResponse(
            executions=[
                execution_to_proto(r, stages.get(r.id), attempts.get(r.id), outputs=False)
                for r in rows
            ],
            next_page_token=token,
        )

    async def CancelExecution(
        self, request: orchestrator_pb2.CancelExecutionRequest, context: Context
    ) -> orchestrator_pb2.CancelExecutionResponse:
        principal = current_principal()
        row, running = await self.db.run(
            lambda s: executions.cancel(s, principal, request.execution_id, request.reason)
        )
        await self.dispatcher.cancel_running([stage.id for stage in running])
        await self.dispatcher.report_outcomes()
        return orchestrator_pb2.CancelExecutionResponse(execution=await self._full(row.id))

    async def RetryExecution(
        self, request: orchestrator_pb2.RetryExecutionRequest, context: Context
    ) -> orchestrator_pb2.RetryExecutionResponse:
        principal = current_principal()
        row, stages, attempts = await self.db.run(
            lambda s: executions.retry_and_read(
                s, principal, request.execution_id, request.retry_number
            )
        )
        self.dispatcher.remember_trace(row.id)
        self.dispatcher.wake.set()
        return orchestrator_pb2.RetryExecutionResponse(
            execution=execution_to_proto(row, stages, attempts)
        )

    async def WatchExecution(
        self, request: orchestrator_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[orchestrator_pb2.WatchExecutionResponse]:
        follow = self.hub.follow(
            request.execution_id, request.after_sequence, principal=current_principal()
        )
        async with aclosing(follow) as looks:
            async for events in looks:
                if request.batched:  # what one look at the log found, in one message
                    yield orchestrator_pb2.WatchExecutionResponse(
                        events=[event_to_proto(event) for event in events]
                    )
                else:
                    for event in events:
                        yield orchestrator_pb2.WatchExecutionResponse(event=event_to_proto(event))

    async def GetQueue(
        self, request: orchestrator_pb2.GetQueueRequest, context: Context
    ) -> orchestrator_pb2.GetQueueResponse:
        principal = current_principal()
        stats = await self.db.run_tx(lambda tx: queue.queue_seen_by(tx, principal))
        levels = []
        for priority, (depth, oldest) in stats["levels"].items():
            wait = convert.duration(oldest)
            levels.append(
                orchestrator_pb2.QueueLevel(
                    priority=_enum(
                        common_pb2.Priority, "PRIORITY_", executions.PRIORITY_NAMES[priority]
                    ),
                    depth=depth,
                    oldest_wait=wait,
                )
            )
        return orchestrator_pb2.GetQueueResponse(
            levels=levels,
            total_depth=sum(level.depth for level in levels),
            running=stats["running"],
            retry_waiting=stats["retry_waiting"],
        )


def worker_to_proto(row: models.Worker) -> registry_pb2.Worker:
    return registry_pb2.Worker(
        worker_id=row.id,
        name=row.name,
        address=row.address,
        capabilities=row.capabilities,
        max_concurrency=row.max_concurrency,
        active_stages=row.active_stages,
        version=row.version,
        state=_enum(registry_pb2.WorkerState, "WORKER_STATE_", row.state),
        last_heartbeat_time=convert.timestamp(row.last_heartbeat_at),
        register_time=convert.timestamp(row.registered_at),
    )


class RegistryHandlers(registry_pb2_grpc.WorkerRegistryServiceServicer):
    def __init__(
        self, db: Database, dispatcher: Dispatcher, interval: float, timeout: float
    ) -> None:
        self.db, self.dispatcher = db, dispatcher
        self.interval, self.timeout = interval, timeout

    async def RegisterWorker(
        self, request: registry_pb2.RegisterWorkerRequest, context: Context
    ) -> registry_pb2.RegisterWorkerResponse:
        principal = current_principal()
        row = await self.db.run(
            lambda s: registry.register(
                s,
                principal,
                worker_id=request.worker_id,
                name=request.name,
                address=request.address,
                capabilities=list(request.capabilities),
                max_concurrency=request.max_concurrency,
                version=request.version,
            )
        )
        self.dispatcher.workers_changed()
        return registry_pb2.RegisterWorkerResponse(
            worker=worker_to_proto(row),
            heartbeat_interval=convert.duration(self.interval),
            heartbeat_timeout=convert.duration(self.timeout),
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        principal = current_principal()
        row = await self.db.run(
            lambda s: registry.heartbeat(s, principal, request.worker_id, request.active_stages)
        )
        return registry_pb2.HeartbeatResponse(
            state=_enum(registry_pb2.WorkerState, "WORKER_STATE_", row.state)
        )

    async def ListWorkers(
        self, request: registry_pb2.ListWorkersRequest, context: Context
    ) -> registry_pb2.ListWorkersResponse:
        rows, token = await self.db.run(
            lambda s: registry.list_workers(
                s, request.page_size, request.page_token, request.capability
            )
        )
        return registry_pb2.ListWorkersResponse(
            workers=[worker_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeregisterWorker(
        self, request: registry_pb2.DeregisterWorkerRequest, context: Context
    ) -> registry_pb2.DeregisterWorkerResponse:
        principal = current_principal()
        row = await self.db.run(
            lambda s: registry.deregister(s, principal, request.worker_id, request.drain)
        )
        self.dispatcher.workers_changed()
        return registry_pb2.DeregisterWorkerResponse(worker=worker_to_proto(row))
