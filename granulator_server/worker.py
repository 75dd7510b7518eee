"""The granulator's side of the worker protocol: reservations from accepted offers, idempotent
processing per (execution, stage, attempt), per-attempt progress logs and cancellation."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from google.protobuf import duration_pb2

from bitware_core import convert
from bitware_core.db import Database
from bitware_core.errors import NotFound
from granulator_server import jobs
from granulator_server.domain import (
    SEED_TEMPLATES,
    StructureTemplate,
    match_template,
    score_quality,
)
from granulator_server.errors import NoReservation
from granulator_server.providers import Provider

log = logging.getLogger("bitware.granulator.worker")
Context = grpc.aio.ServicerContext[Any, Any]
Key = tuple[str, str, int]
CAPABILITIES = ("granulate",)
ACTIONS = {"granulate": ("generate",)}
RESERVATION_SECONDS = 30.0
TERMINAL = {worker_pb2.PHASE_COMPLETED, worker_pb2.PHASE_FAILED, worker_pb2.PHASE_CANCELLED}


@dataclass
class StageLog:
    """The ordered progress events of one stage attempt, for WatchProgress."""

    events: list[worker_pb2.ProgressEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, phase: int, message: str, fraction: float, elements: int = 0) -> None:
        event = worker_pb2.ProgressEvent(
            sequence=len(self.events) + 1,
            phase=phase,  # type: ignore[arg-type]
            message=message,
            fraction=fraction,
            elements_so_far=elements,
        )
        event.time.GetCurrentTime()
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def has_after(self, sequence: int) -> bool:
        return len(self.events) > sequence


@dataclass
class Offer:
    request: worker_pb2.HandshakeRequest
    template: StructureTemplate
    expires_at: float
    task: asyncio.Task[worker_pb2.ProcessResponse] | None = None


def _key(ref: worker_pb2.StageRef) -> Key:
    return (ref.execution_id, ref.stage_id, ref.attempt)


class WorkerHandlers(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, db: Database, provider: Provider, max_jobs: int, worker_id: str) -> None:
        self.db, self.provider, self.max_jobs, self.worker_id = db, provider, max_jobs, worker_id
        self.offers: dict[Key, Offer] = {}
        self.logs: dict[Key, StageLog] = {}
        self.templates = list(SEED_TEMPLATES)

    @property
    def active(self) -> int:
        now = time.monotonic()
        return sum(1 for o in self.offers.values() if o.task is not None or o.expires_at > now)

    def _decline(
        self, reason: int, message: str, retry_after: float = 0.0
    ) -> worker_pb2.HandshakeResponse:
        wait = duration_pb2.Duration()
        wait.FromMilliseconds(int(retry_after * 1000))
        return worker_pb2.HandshakeResponse(
            accepted=False,
            decline_reason=reason,  # type: ignore[arg-type]
            message=message,
            retry_after=wait,
            worker_id=self.worker_id,
        )

    async def Handshake(
        self, request: worker_pb2.HandshakeRequest, context: Context
    ) -> worker_pb2.HandshakeResponse:
        spec = request.input.spec
        if request.action not in ACTIONS.get(request.capability, ()):
            return self._decline(
                worker_pb2.DECLINE_REASON_UNSUPPORTED,
                f"cannot {request.capability}/{request.action}",
            )
        query = request.structure_template or convert.enum_name(
            common_pb2.StructureType, spec.structure_type, "STRUCTURE_TYPE_"
        )
        template = match_template(self.templates, query) if query else None
        if template is None:
            return self._decline(
                worker_pb2.DECLINE_REASON_UNKNOWN_TEMPLATE,
                f"no structure template matches {query!r}",
            )
        problems = []
        if not spec.topic.strip():
            problems.append("spec.topic is empty")
        if not 1 <= spec.granularity <= 5:
            problems.append(f"spec.granularity {spec.granularity} is not from 1 to 5")
        if problems:
            return self._decline(worker_pb2.DECLINE_REASON_INVALID_INPUT, "; ".join(problems))
        key = _key(request.stage)
        if key not in self.offers:
            if self.active >= self.max_jobs:
                return self._decline(
                    worker_pb2.DECLINE_REASON_AT_CAPACITY,
                    f"all {self.max_jobs} slots busy",
                    retry_after=1.0,
                )
            self.offers[key] = Offer(request, template, time.monotonic() + RESERVATION_SECONDS)
            self.logs[key] = StageLog()
            await self.logs[key].add(worker_pb2.PHASE_ACCEPTED, "offer accepted", 0.0)
        expires = self.offers[key].expires_at
        response = worker_pb2.HandshakeResponse(accepted=True, worker_id=self.worker_id)
        response.estimated_duration.FromMilliseconds(100)
        response.reservation_expire_time.FromSeconds(int(time.time() + expires - time.monotonic()))
        return response

    async def Process(
        self, request: worker_pb2.ProcessRequest, context: Context
    ) -> worker_pb2.ProcessResponse:
        ref = request.stage
        stored = await self.db.run(
            lambda s: jobs.find(s, ref.execution_id, ref.stage_id, ref.attempt)
        )
        if stored is not None and stored.result:
            return worker_pb2.ProcessResponse.FromString(bytes.fromhex(stored.result["response"]))
        offer = self.offers.get(_key(ref))
        if offer is None or offer.request.stage.epoch != ref.epoch:
            raise NoReservation(f"no accepted offer for stage {ref.stage_id} attempt {ref.attempt}")
        if offer.task is None:
            offer.task = asyncio.create_task(self._run(offer))
        # Shielded: a dropped call does not stop the work; a repeated call gets the same result.
        return await asyncio.shield(offer.task)

    async def _run(self, offer: Offer) -> worker_pb2.ProcessResponse:
        request, template = offer.request, offer.template
        ref, stage_log = request.stage, self.logs[_key(request.stage)]
        spec = convert.spec_from_proto(request.input.spec)
        job = await self.db.run(
            lambda s: jobs.start(
                s,
                client_id=request.client_id,
                execution_id=ref.execution_id,
                stage_id=ref.stage_id,
                attempt=ref.attempt,
                action=request.action,
                spec=spec,
                structure_type=template.structure_type,
                template_name=template.name,
            )
        )
        try:
            await stage_log.add(
                worker_pb2.PHASE_PROMPT_BUILT, f"using template {template.name}", 0.1
            )
            await stage_log.add(
                worker_pb2.PHASE_GENERATING,
                f"generating with the {self.provider.name} provider",
                0.2,
            )
            generation = await self.provider.generate(template, spec, request.input.feedback)
            await stage_log.add(worker_pb2.PHASE_VALIDATING, "validating", 0.7)
            report = score_quality(template, generation.document, int(spec["granularity"]))
            await stage_log.add(worker_pb2.PHASE_STORING, "storing the element tree", 0.85)
            response = worker_pb2.ProcessResponse(
                result=worker_pb2.StageResult(
                    output=convert.to_struct(
                        {
                            "job_id": job.id,
                            "structure_type": template.structure_type,
                            "quality_score": report.score,
                        }
                    ),
                    job_id=job.id,
                    quality=common_pb2.QualityReport(
                        score=report.score,
                        components=report.components,
                        feedback=report.feedback,
                        violations=[
                            common_pb2.Violation(path=v.path, rule=v.rule, message=v.message)
                            for v in report.violations
                        ],
                        below_threshold=report.score < request.input.min_quality_score,
                    ),
                ),
                usage=convert.usage_to_proto(generation.usage),
            )
            stored = await self.db.run(
                lambda s: jobs.complete(
                    s,
                    job.id,
                    document=generation.document,
                    report=report,
                    usage=generation.usage,
                    result={"response": response.SerializeToString().hex()},
                )
            )
            response.metrics["elements"] = stored.element_count
            await stage_log.add(worker_pb2.PHASE_COMPLETED, "completed", 1.0, stored.element_count)
            return response
        except asyncio.CancelledError:
            await self.db.run(lambda s: jobs.fail(s, job.id, "cancelled", "cancelled", {}))
            await stage_log.add(worker_pb2.PHASE_CANCELLED, "cancelled", 1.0)
            raise
        except Exception as error:
            log.exception("generation failed", extra={"job": job.id})
            failure = str(error)
            response = worker_pb2.ProcessResponse(
                error=worker_pb2.StageError(
                    error_class=worker_pb2.ERROR_CLASS_INTERNAL,
                    reason="GENERATION_ERROR",
                    message=failure,
                )
            )
            await self.db.run(
                lambda s: jobs.fail(
                    s,
                    job.id,
                    "failed",
                    failure,
                    {"response": response.SerializeToString().hex()},
                )
            )
            await stage_log.add(worker_pb2.PHASE_FAILED, failure, 1.0)
            return response
        finally:
            self.offers.pop(_key(ref), None)

    async def WatchProgress(
        self, request: worker_pb2.WatchProgressRequest, context: Context
    ) -> AsyncIterator[worker_pb2.WatchProgressResponse]:
        stage_log = self.logs.get(_key(request.stage))
        if stage_log is None:
            raise NotFound(
                f"no progress for stage {request.stage.stage_id} attempt {request.stage.attempt}"
            )
        sent = request.after_sequence
        while True:
            async with stage_log.changed:
                await stage_log.changed.wait_for(functools.partial(stage_log.has_after, sent))
                pending = stage_log.events[sent:]
            for event in pending:
                sent = event.sequence
                yield worker_pb2.WatchProgressResponse(event=event)
                if event.phase in TERMINAL:
                    return

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: Context
    ) -> worker_pb2.CancelResponse:
        offer = self.offers.pop(_key(request.stage), None)
        if offer is None:
            return worker_pb2.CancelResponse(cancelled=False)
        if offer.task is not None:
            offer.task.cancel()
        else:
            await self.logs[_key(request.stage)].add(worker_pb2.PHASE_CANCELLED, "cancelled", 1.0)
        return worker_pb2.CancelResponse(cancelled=True)
