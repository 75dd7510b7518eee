"""The granulator's side of the worker protocol (`bitware.worker.v1.WorkerService`), thin:
whether an offer can be served and the work itself are in `stages`, the slots (reservations,
capacity, one run per attempt, cancellation) in `offers`, the logs in `progress`. Progress is
streamed one event per message, or several for a caller that asks for batches. Progress logs of
ended attempts are dropped `progress.retention` seconds after they end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core import convert
from bitware_core.db import Database
from bitware_core.errors import NotFound
from bitware_core.server import Context
from granulator_server import offers, progress, stages
from granulator_server.providers import Provider

log = logging.getLogger("bitware.granulator.worker")
LOG_RETENTION_SECONDS = 300.0


def _key(ref: worker_pb2.StageRef) -> offers.Key:
    return (ref.execution_id, ref.stage_id, ref.attempt)


class WorkerHandlers(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self, db: Database, provider: Provider, max_jobs: int, worker_id: str, cpu_jobs: int
    ) -> None:
        self.provider, self.worker_id = provider, worker_id
        self.runner = stages.StageRunner(db, provider, worker_id, cpu_jobs)
        self.progress = progress.ProgressBook(LOG_RETENTION_SECONDS)
        self.slots = offers.Slots(db, self.runner, self.progress, max_jobs)

    async def Handshake(
        self, request: worker_pb2.HandshakeRequest, context: Context
    ) -> worker_pb2.HandshakeResponse:
        work = await self.slots.offer(offered_from_proto(request))
        if isinstance(work, stages.Decline):
            return worker_pb2.HandshakeResponse(
                accepted=False,
                decline_reason=worker_pb2.DeclineReason.Value(f"DECLINE_REASON_{work.reason}"),
                message=work.message,
                retry_after=convert.duration(work.retry_after),
                worker_id=self.worker_id,
            )
        guess = stages.estimate_work(work, self.provider)
        response = worker_pb2.HandshakeResponse(
            accepted=True,
            worker_id=self.worker_id,
            estimate=worker_pb2.ResourceEstimate(
                prompt_tokens=guess.prompt_tokens,
                completion_tokens=guess.completion_tokens,
                cost_usd=guess.cost_usd,
                memory_mb=guess.memory_mb,
            ),
            estimated_duration=convert.duration(guess.seconds),
        )
        response.reservation_expire_time.FromMilliseconds(
            int((time.time() + self.slots.reservation_seconds) * 1000)
        )
        return response

    async def Process(
        self, request: worker_pb2.ProcessRequest, context: Context
    ) -> worker_pb2.ProcessResponse:
        outcome = await self.slots.process(_key(request.stage), request.stage.epoch)
        return outcome.to_proto()

    async def WatchProgress(
        self, request: worker_pb2.WatchProgressRequest, context: Context
    ) -> AsyncIterator[worker_pb2.WatchProgressResponse]:
        stage_log = self.progress.get(_key(request.stage))
        if stage_log is None:
            raise NotFound(
                f"no progress for stage {request.stage.stage_id} attempt {request.stage.attempt}"
            )
        if request.batched:
            # Whatever accumulated while the previous message was being sent goes in one.
            async for batch in stage_log.batches(request.after_sequence):
                yield worker_pb2.WatchProgressResponse(events=[_event_to_proto(e) for e in batch])
        else:
            async for event in stage_log.follow(request.after_sequence):
                yield worker_pb2.WatchProgressResponse(event=_event_to_proto(event))

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: Context
    ) -> worker_pb2.CancelResponse:
        cancelled = await self.slots.cancel(_key(request.stage), request.reason)
        usage = cancelled.usage
        return worker_pb2.CancelResponse(
            cancelled=cancelled.held,
            usage=usage.to_proto() if usage is not None else None,
        )


def _event_to_proto(event: progress.ProgressEvent) -> worker_pb2.ProgressEvent:
    message = worker_pb2.ProgressEvent(
        sequence=event.sequence,
        phase=worker_pb2.Phase.Value(f"PHASE_{event.phase}"),
        message=event.message,
        fraction=event.fraction,
        elements_so_far=event.elements_so_far,
    )
    message.time.FromMilliseconds(int(event.time * 1000))
    return message


def offered_from_proto(request: worker_pb2.HandshakeRequest) -> stages.Offered:
    spec, unknown = request.input.spec, 0
    if spec.structure_type not in common_pb2.StructureType.values():
        unknown = spec.structure_type
        spec = common_pb2.ContentSpec()
        spec.CopyFrom(request.input.spec)
        spec.ClearField("structure_type")
    return stages.Offered(
        execution_id=request.stage.execution_id,
        stage_id=request.stage.stage_id,
        attempt=request.stage.attempt,
        epoch=request.stage.epoch,
        client_id=request.client_id,
        capability=request.capability,
        action=request.action,
        structure_template=request.structure_template,
        spec=convert.spec_from_proto(spec),
        params=dict(request.params),
        previous_job_id=request.input.previous_job_id,
        previous_output=convert.from_struct(request.input.previous_output),
        feedback=request.input.feedback,
        min_quality=request.input.min_quality_score,
        unknown_structure_type=unknown,
    )
