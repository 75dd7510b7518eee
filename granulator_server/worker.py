"""The granulator's side of the worker protocol (`bitware.worker.v1.WorkerService`): checks
offers and reserves slots, runs accepted attempts once per (execution, stage, attempt), streams
their progress (several events per message for a caller that asks for batches) and cancels
them. Thin: whether an offer can be served (`stages.check_offer`) and the work itself are in
`stages`, the logs in `progress`.

Slots (`max_jobs`) bound the attempts held at once, not the work done at once: an attempt spends
most of its time waiting on the model, so a granulator holds as many as its provider takes calls
(`capacity`); the CPU-bound part of each has its own, small bound (`stages.StageRunner.cpu`).

A reservation lasts `reservation_seconds`; when `Process` has not started by then the slot is
freed and the attempt's log ends as cancelled. Progress logs of ended attempts are dropped
`progress.retention` seconds after they end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core import convert
from bitware_core.db import Database
from bitware_core.errors import NotFound
from granulator_server import jobs, progress, stages, template_store
from granulator_server.domain import StructureTemplate
from granulator_server.errors import NoReservation, StageCancelled
from granulator_server.providers import Provider

log = logging.getLogger("bitware.granulator.worker")
Context = grpc.aio.ServicerContext[Any, Any]
Key = tuple[str, str, int]
RESERVATION_SECONDS = 30.0
LOG_RETENTION_SECONDS = 300.0
BUSY_RETRY_SECONDS = 1.0
#: Slots of a granulator on the offline provider, whose work is all CPU.
OFFLINE_SLOTS = 4
#: The most slots the orchestrator's registry takes from one worker.
MOST_SLOTS = 1000


def capacity(max_concurrent_jobs: int, max_model_calls: int, provider: Provider) -> int:
    """Attempts a granulator holds at once: as configured, else as many as the provider takes
    model calls at once (the offline provider: a few, as its work is all CPU), up to the
    orchestrator's most. Raises ValueError for a configured number the orchestrator refuses."""
    if max_concurrent_jobs == 0:
        return OFFLINE_SLOTS if provider.name == "offline" else min(max_model_calls, MOST_SLOTS)
    if not 1 <= max_concurrent_jobs <= MOST_SLOTS:
        raise ValueError(
            f"BITWARE_MAX_CONCURRENT_JOBS must be from 1 to 1000 (or 0), got {max_concurrent_jobs}"
        )
    return max_concurrent_jobs


@dataclass
class Offer:
    """An accepted offer: reserved until Process starts it, then running until it ends."""

    work: stages.Work
    epoch: int
    #: The Handshake found no job for the attempt, so `Process` need not look for one.
    job_known_new: bool = False
    expiry: asyncio.TimerHandle | None = None
    task: asyncio.Task[dict[str, Any]] | None = None


def _key(ref: worker_pb2.StageRef) -> Key:
    return (ref.execution_id, ref.stage_id, ref.attempt)


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromMilliseconds(int(seconds * 1000))
    return value


class WorkerHandlers(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self, db: Database, provider: Provider, max_jobs: int, worker_id: str, cpu_jobs: int
    ) -> None:
        self.db, self.provider, self.max_jobs, self.worker_id = db, provider, max_jobs, worker_id
        self.runner = stages.StageRunner(db, provider, worker_id, cpu_jobs)
        self.offers: dict[Key, Offer] = {}
        self.progress = progress.ProgressBook(LOG_RETENTION_SECONDS)
        self.reservation_seconds = RESERVATION_SECONDS
        #: Set when the server stops: every new offer is declined as DRAINING.
        self.draining = False

    @property
    def active(self) -> int:
        """Slots in use: running attempts and live reservations."""
        return len(self.offers)

    async def Handshake(
        self, request: worker_pb2.HandshakeRequest, context: Context
    ) -> worker_pb2.HandshakeResponse:
        offered = offered_from_proto(request)
        work = await stages.check_offer(offered, self._resolve, draining=self.draining)
        if isinstance(work, stages.Decline):
            return self._decline(work)
        key = _key(request.stage)
        offer = self.offers.get(key)
        finished: bool | None = False
        if offer is not None:
            offer.epoch = max(offer.epoch, request.stage.epoch)
        elif not (finished := await self._finished(key, request.stage.epoch)):
            if self.active >= self.max_jobs:
                return self._decline(
                    stages.Decline(
                        stages.DeclineReason.AT_CAPACITY,
                        f"all {self.max_jobs} slots are busy",
                        retry_after=BUSY_RETRY_SECONDS,
                    )
                )
            offer = self.offers[key] = Offer(
                work, request.stage.epoch, job_known_new=finished is None
            )
            offer.expiry = asyncio.get_running_loop().call_later(
                self.reservation_seconds, self._expire, key, offer
            )
            self.progress.open(key).add(progress.ACCEPTED, "offer accepted", 0.0)
        return self._accepted(work.template, work.spec, request.action)

    def _decline(self, decline: stages.Decline) -> worker_pb2.HandshakeResponse:
        return worker_pb2.HandshakeResponse(
            accepted=False,
            decline_reason=worker_pb2.DeclineReason.Value(f"DECLINE_REASON_{decline.reason}"),
            message=decline.message,
            retry_after=_duration(decline.retry_after),
            worker_id=self.worker_id,
        )

    async def _resolve(self, query: str) -> StructureTemplate | None:
        """The template for `query`, current even when another granulator sharing the database
        has just changed it (one small query while this process's copy is current)."""
        engine = self.db.engine
        found = await self.db.run_tx(lambda tx: template_store.resolve_tx(tx, engine, query))
        return found[0] if found else None

    async def _finished(self, key: Key, epoch: int) -> bool | None:
        """Whether the attempt's job has finished; None when there is no job for it at all.
        Epoch 1 is a stage's first claim ever, so no worker can have a job for it yet: no
        lookup (the common case, and a database round trip off every dispatch)."""
        if epoch == 1:
            return None
        stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
        if stored is None:
            return None
        return bool(stored.result)

    def _accepted(
        self, template: Any, spec: dict[str, Any], action: str
    ) -> worker_pb2.HandshakeResponse:
        response = worker_pb2.HandshakeResponse(accepted=True, worker_id=self.worker_id)
        if action == "generate":
            guess = stages.estimate(template, spec)
            response.estimate.prompt_tokens = guess["prompt_tokens"]
            response.estimate.completion_tokens = guess["completion_tokens"]
            prices = getattr(self.provider, "prices", None)
            if prices is not None:
                response.estimate.cost_usd = prices.cost(
                    self.provider.model, guess["prompt_tokens"], guess["completion_tokens"]
                )
        response.estimate.memory_mb = 64
        seconds = 0.1 if self.provider.name == "offline" else 30.0
        response.estimated_duration.CopyFrom(_duration(seconds))
        response.reservation_expire_time.FromMilliseconds(
            int((time.time() + self.reservation_seconds) * 1000)
        )
        return response

    def _expire(self, key: Key, offer: Offer) -> None:
        if self.offers.get(key) is offer and offer.task is None:
            del self.offers[key]
            self.progress.open(key).add(
                progress.CANCELLED, "reservation expired: Process did not follow in time", 1.0
            )

    async def Process(
        self, request: worker_pb2.ProcessRequest, context: Context
    ) -> worker_pb2.ProcessResponse:
        ref = request.stage
        key = _key(ref)
        offer = self.offers.get(key)
        # An accepted offer that is still here has not finished (its task removes it when it
        # ends, and the Handshake that made it found no finished job): no lookup needed.
        if offer is None or ref.epoch < offer.epoch:
            stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
            if stored is not None and stored.result:
                if stored.result.get("cancelled"):
                    raise StageCancelled(ref.stage_id, ref.attempt)
                return outcome_to_proto(stored.result)
            offer = self.offers.get(key)
        if offer is None or ref.epoch < offer.epoch:
            raise NoReservation(ref.stage_id, ref.attempt, ref.epoch)
        if offer.task is None:
            if offer.expiry is not None:
                offer.expiry.cancel()
            offer.task = asyncio.create_task(self._run(key, offer))
        task = offer.task
        try:
            # Shielded: a dropped call does not stop the work; a repeated call joins it.
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise StageCancelled(ref.stage_id, ref.attempt) from None
            raise
        return outcome_to_proto(outcome)

    async def _run(self, key: Key, offer: Offer) -> dict[str, Any]:
        try:
            return await self.runner.run(
                offer.work, self.progress.open(key), job_known_new=offer.job_known_new
            )
        finally:
            if self.offers.get(key) is offer:
                del self.offers[key]

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
        key = _key(request.stage)
        offer = self.offers.get(key)
        if offer is not None and offer.task is None:
            del self.offers[key]
            if offer.expiry is not None:
                offer.expiry.cancel()
            reason = request.reason or "cancelled before it started"
            self.progress.open(key).add(progress.CANCELLED, reason, 1.0)
            return worker_pb2.CancelResponse(cancelled=True)
        if offer is not None and offer.task is not None:
            offer.task.cancel()
            await asyncio.gather(offer.task, return_exceptions=True)
        # The attempt's job holds what it consumed: up to the cancel, or in full when it had
        # finished already (the caller still owes it).
        stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
        usage = stored.usage if stored is not None else {}
        return worker_pb2.CancelResponse(
            cancelled=offer is not None, usage=convert.usage_to_proto(usage)
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


def outcome_to_proto(outcome: dict[str, Any]) -> worker_pb2.ProcessResponse:
    """A stored `stages` outcome as the Process response."""
    response = worker_pb2.ProcessResponse(usage=convert.usage_to_proto(outcome.get("usage", {})))
    error = outcome.get("error")
    if error is not None:
        response.error.CopyFrom(
            worker_pb2.StageError(
                error_class=worker_pb2.ErrorClass.Value(f"ERROR_CLASS_{error['error_class']}"),
                reason=error["reason"],
                message=error["message"],
                retry_after=_duration(float(error.get("retry_after", 0.0))),
            )
        )
        return response
    quality = outcome["quality"]
    response.result.CopyFrom(
        worker_pb2.StageResult(
            output=convert.to_struct(outcome["output"]),
            job_id=outcome["job_id"],
            quality=json_format.ParseDict(
                quality, common_pb2.QualityReport(), ignore_unknown_fields=True
            ),
        )
    )
    for name, value in outcome.get("metrics", {}).items():
        response.metrics[name] = float(value)
    return response
