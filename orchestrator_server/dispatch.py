"""The dispatcher: claims ready stages from the durable queue, offers each to a worker
(`Handshake`), runs it (`Process`) while following the worker's `WatchProgress` stream (in
batches; none when the worker said it reports no progress), and records the outcome. Also
renews its leases, re-queues stages of dead holders, watches worker heartbeats and reports
finished executions to KAM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core import convert, tracing
from bitware_core.batching import TxBatcher
from bitware_core.channels import open_channel, service_metadata
from bitware_core.config import Settings
from bitware_core.context import execution_id_var
from bitware_core.db import Database
from bitware_core.domain import AttemptStatus, StageError, StageOutcome, Usage
from bitware_core.metrics import BUCKETS, CallbackGauge
from bitware_core.sql import Tx
from orchestrator_server import executions, models, outcomes, payloads, queue, registry
from orchestrator_server.errors import CorruptPayload, StaleAttempt
from orchestrator_server.events import EventHub
from orchestrator_server.kam_client import KamClient

log = logging.getLogger("bitware.orchestrator.dispatch")
T = TypeVar("T")
FINAL_DECLINES = {"INVALID_INPUT", "UNKNOWN_TEMPLATE"}
#: How long stopping waits for the dispatcher's tasks to end after cancelling them.
STOP_SECONDS = 10.0
#: Seconds between health checks of each healthy worker.
HEALTH_PROBE_SECONDS = 2.0
#: How long to let a finished stage's progress stream drain before recording its outcome.
FOLLOW_GRACE_SECONDS = 0.5
#: Trace contexts of executions kept for their dispatch (only with tracing on).
TRACES_KEPT = 10_000
_LOST_ATTEMPT = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        hub: EventHub,
        kam: KamClient,
        metrics: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.kam = kam
        self.owner = f"orc-{uuid.uuid4().hex[:12]}"
        #: Acceptances, outcomes and reported marks that arrive together share a transaction.
        self.batcher = TxBatcher(db, writers=1 if db.is_sqlite else 4)
        self.wake = asyncio.Event()
        self.running: dict[str, tuple[asyncio.Task[None], queue.Claim, str]] = {}
        #: stage id → worker id → loop time until which that worker's decline is remembered
        self.declined: dict[str, dict[str, float]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerServiceAsyncStub] = {}
        self._health: dict[str, health_pb2_grpc.HealthStub] = {}
        #: Workers whose last health check failed: no offers from this replica.
        self.not_serving: set[str] = set()
        #: The healthy workers, as of the last housekeeping round (None: read them again).
        self._workers: list[models.Worker] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._claimed_at: dict[str, float] = {}
        #: Executions whose outcome is being reported to KAM right now.
        self._reporting: set[str] = set()
        self._snapshot: dict[str, Any] = {"levels": {}, "workers": {}}
        #: execution id → the trace context it was started in (`remember_trace`)
        self._traces: dict[str, dict[str, str]] = {}
        self._dispatch_seconds = Histogram(
            "bitware_dispatch_seconds",
            "From claiming a ready stage to a worker accepting it.",
            buckets=BUCKETS,
            registry=metrics,
        )
        self._stage_seconds = Histogram(
            "bitware_stage_seconds",
            "Time a worker spent on a stage attempt, by outcome.",
            ("capability", "outcome"),
            buckets=BUCKETS,
            registry=metrics,
        )
        self._retries = Counter(
            "bitware_stage_retries",
            "Stage attempts that failed and will run again.",
            ("reason",),
            registry=metrics,
        )
        CallbackGauge(
            "bitware_queue_depth",
            "Stages waiting for a worker, by priority.",
            ("priority",),
            lambda: {(p,): depth for p, (depth, _) in self._snapshot["levels"].items()},
            metrics,
        )
        CallbackGauge(
            "bitware_queue_oldest_wait_seconds",
            "How long the oldest waiting stage has waited.",
            ("priority",),
            lambda: {(p,): wait for p, (_, wait) in self._snapshot["levels"].items()},
            metrics,
        )
        CallbackGauge(
            "bitware_workers",
            "Registered workers, by state.",
            ("state",),
            lambda: {(state,): n for state, n in self._snapshot["workers"].items()},
            metrics,
        )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatch_loop()),
            asyncio.create_task(self._housekeeping_loop()),
            asyncio.create_task(self._health_loop()),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t for t, _, _ in self.running.values())]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in stuck:  # should not happen; say where it hangs rather than hang too
                where = io.StringIO()
                task.print_stack(file=where)
                log.error(
                    "task did not stop", extra={"task": task.get_name(), "stack": where.getvalue()}
                )
        await self.batcher.stop()
        for channel in self._channels.values():
            await channel.close()

    def workers_changed(self) -> None:
        """A worker registered, left or failed: read the registry again before the next offer."""
        self._workers = None
        self.wake.set()

    def channel(self, address: str) -> grpc.aio.Channel:
        """One long-lived channel per worker address."""
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.settings)
        return self._channels[address]

    def stub(self, address: str) -> worker_pb2_grpc.WorkerServiceAsyncStub:
        if address not in self._stubs:
            self._stubs[address] = worker_pb2_grpc.WorkerServiceStub(self.channel(address))
        return self._stubs[address]

    async def _db(self, work: Callable[[Tx], T]) -> T:
        return await self.db.run_tx(work)

    # --- loops ------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                await self._dispatch_once()
            except Exception:
                log.exception("dispatch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=0.25)
            self.wake.clear()

    async def _dispatch_once(self) -> None:
        if self._workers is None:
            self._workers = await self.db.run_tx(registry.available)
        workers = [w for w in self._workers if w.id not in self.not_serving]
        if not workers:
            return
        now = asyncio.get_running_loop().time()
        avoid = {
            stage_id: {w for w, until in declined.items() if until > now}
            for stage_id, declined in self.declined.items()
        }
        claims = await self.db.run_tx(
            lambda tx: queue.claim(
                tx, self.owner, workers, avoid, self.settings.queue.lease_seconds
            )
        )
        if len(claims) >= queue.CLAIM_BATCH:
            self.wake.set()  # there may be more: claim again once these are on their way
        addresses = {w.id: w.address for w in workers}
        for claim in claims:
            self._claimed_at[claim.stage_id] = now
            capable = sum(1 for w in workers if claim.capability in w.capabilities)
            task = asyncio.create_task(
                self._run_stage(claim, addresses[claim.worker_id], capable > 1)
            )
            self.running[claim.stage_id] = (task, claim, "")
            task.add_done_callback(functools.partial(self._finished, claim))

    def _finished(self, claim: queue.Claim, _task: asyncio.Task[None]) -> None:
        self.running.pop(claim.stage_id, None)
        self._claimed_at.pop(claim.stage_id, None)
        self.wake.set()

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                reclaimed, expired = await self.db.run_tx(self._housekeep)
                if reclaimed:
                    self.wake.set()
                for _, running in expired:
                    await self.cancel_running(running, AttemptStatus.TIMED_OUT)
                await self.report_outcomes()
            except Exception:
                log.exception("housekeeping round failed")

    def _housekeep(self, tx: Tx) -> tuple[int, list[tuple[str, list[str]]]]:
        """Once a second, in one transaction: renew this replica's leases, re-queue the stages
        of dead holders, mark silent workers unhealthy, fail what ran out of time, and take the
        figures the metrics report."""
        settings = self.settings
        queue.renew_leases(tx, self.owner, list(self.running), settings.queue.lease_seconds)
        reclaimed = queue.reclaim_expired(tx)
        registry.mark_silent_unhealthy(tx, settings.queue.heartbeat_timeout)
        expired = executions.expire(tx, settings.queue.wait_timeout)
        self._workers = registry.available(tx)
        stats = queue.queue_stats(tx)
        self._snapshot = {
            "levels": {executions.PRIORITY_NAMES[p]: level for p, level in stats["levels"].items()},
            "workers": registry.count_by_state(tx),
        }
        return reclaimed, expired

    async def _health_loop(self) -> None:
        """Asks each healthy worker's gRPC health service how it is, every few seconds; one that
        answers NOT_SERVING (it is shutting down) or not at all gets no offers from this replica
        until it answers SERVING again. A worker without a health service is judged by its
        heartbeats alone."""
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            try:
                workers = await self.db.run_tx(registry.available)
                results = await asyncio.gather(*(self._probe(w.address) for w in workers))
                failing = {w.id for w, serving in zip(workers, results, strict=True) if not serving}
                for worker_id in failing - self.not_serving:
                    log.warning("worker failed its health check", extra={"worker": worker_id})
                self.not_serving = failing
            except Exception:
                log.exception("health round failed")

    async def _probe(self, address: str) -> bool:
        if address not in self._health:
            self._health[address] = health_pb2_grpc.HealthStub(self.channel(address))
        try:
            answer = await self._health[address].Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
        except grpc.aio.AioRpcError as error:
            # No health service, or none for the whole server: heartbeats alone decide.
            return error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)
        serving: bool = answer.status == health_pb2.HealthCheckResponse.SERVING
        return serving

    async def report_outcomes(self) -> None:
        """Reports the ended executions KAM has not heard of: those whose report failed, or
        whose reporter stopped before it could."""
        for execution in await self.db.run_tx(outcomes.unreported):
            if execution.id not in self._reporting:
                await self._report(execution)

    async def _report(self, execution: models.Execution) -> None:
        if not execution.request_id:
            return  # started by staff without a KAM request: KAM has nothing to settle
        self._reporting.add(execution.id)
        try:
            try:
                await self.kam.report_outcome(execution)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "could not report outcome to KAM; will retry",
                    extra={"execution": execution.id, "code": error.code().name},
                )
                return
            await self.batcher.run(
                execution.id,
                functools.partial(
                    outcomes.mark_reported,
                    execution_id=execution.id,
                    retries=execution.retries,
                    cost_micros=Usage.from_json(execution.usage).cost_micros,
                ),
            )
        finally:
            self._reporting.discard(execution.id)

    # --- one stage attempt --------------------------------------------------------------------

    def remember_trace(self, execution_id: str) -> None:
        """With tracing on: the execution's stages are dispatched in the trace of the call that
        started (or retried) it. Kept in this process's memory, the most recent
        `TRACES_KEPT`: a stage claimed by another replica, or after a restart, starts a trace
        of its own."""
        if context := tracing.headers():
            self._traces[execution_id] = dict(context)
            if len(self._traces) > TRACES_KEPT:
                del self._traces[next(iter(self._traces))]

    async def _run_stage(self, claim: queue.Claim, address: str, has_alternative: bool) -> None:
        execution_id_var.set(claim.execution_id)
        with tracing.span(
            f"dispatch {claim.capability}",
            parent=self._traces.get(claim.execution_id),
            attributes={
                "bitware.execution_id": claim.execution_id,
                "bitware.attempt": claim.attempt,
            },
        ):
            await self._run_claimed(claim, address, has_alternative)

    async def _run_claimed(self, claim: queue.Claim, address: str, has_alternative: bool) -> None:
        try:
            if claim.previous_output_ref:
                reference = claim.previous_output_ref
                output = await self.db.run_tx(lambda tx: payloads.load(tx, reference))
                claim = dataclasses.replace(claim, previous_output=output)
            await self._offer_and_process(claim, address, has_alternative)
        except CorruptPayload as error:
            await self._fail(claim, StageError("CORRUPT", error.reason, error.message))
        except StaleAttempt:
            log.info("stale attempt dropped", extra={"stage": claim.stage_id})
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.exception("stage attempt crashed", extra={"stage": claim.stage_id})
            await self._fail(claim, StageError("INTERNAL", "ORCHESTRATOR_ERROR", str(error)))

    async def _fail(
        self,
        claim: queue.Claim,
        error: StageError,
        *,
        usage: Usage | None = None,
        status: AttemptStatus = AttemptStatus.FAILED,
    ) -> None:
        """Records a failed attempt; the retry policy decides what follows."""
        used = usage or Usage()
        await self._record(
            claim,
            used,
            lambda tx: outcomes.record_failure(tx, claim, error, usage=used, status=status),
        )

    async def _record(self, claim: queue.Claim, usage: Usage, work: Callable[[Tx], Any]) -> None:
        """Records an attempt's outcome. One that comes too late (the execution was cancelled
        or ran out of time meanwhile) is refused, but what it cost was spent: that is still
        counted before StaleAttempt goes on."""
        try:
            finished = await self.batcher.run(claim.execution_id, work)
        except StaleAttempt:
            if usage:
                await self._db(
                    lambda tx: outcomes.record_stopped(tx, claim, AttemptStatus.ABANDONED, usage)
                )
            raise
        if isinstance(finished, outcomes.Finished):
            if finished.retry_reason:
                self._retries.labels(finished.retry_reason).inc()
            if finished.ended is not None:
                await self._report(finished.ended)

    def _offer(self, claim: queue.Claim) -> worker_pb2.HandshakeRequest:
        return worker_pb2.HandshakeRequest(
            stage=self._ref(claim),
            capability=claim.capability,
            action=claim.action,
            structure_template=claim.structure_template,
            params=claim.params,
            input=worker_pb2.StageInput(
                spec=convert.spec_to_proto(claim.spec),
                previous_output=convert.to_struct(claim.previous_output),
                previous_job_id=claim.previous_job_id,
                feedback=claim.feedback,
                min_quality_score=claim.min_quality,
            ),
            timeout=convert.duration(claim.timeout_s),
            client_id=claim.client_id,
        )

    @staticmethod
    def _ref(claim: queue.Claim) -> worker_pb2.StageRef:
        return worker_pb2.StageRef(
            execution_id=claim.execution_id,
            stage_id=claim.stage_id,
            attempt=claim.attempt,
            epoch=claim.epoch,
        )

    async def _offer_and_process(
        self, claim: queue.Claim, address: str, has_alternative: bool
    ) -> None:
        """Runs the claimed attempt on the worker it was offered to: Handshake (unless the
        attempt is being re-attached there), then Process, following the attempt's progress
        unless the worker said it reports none."""
        worker_id = claim.worker_id
        stub = self.stub(address)
        follow = True  # a re-attached attempt's worker has not said: follow it
        if claim.reattach_worker != worker_id:
            answer = await self._handshake(claim, worker_id, stub, has_alternative)
            if answer is None:
                return
            follow = not answer.no_progress
        claimed_at = self._claimed_at.pop(claim.stage_id, None)
        if claimed_at is not None:
            self._dispatch_seconds.observe(asyncio.get_running_loop().time() - claimed_at)
        self.running[claim.stage_id] = (self.running[claim.stage_id][0], claim, address)
        await self.batcher.run(
            claim.execution_id, lambda tx: outcomes.record_accept(tx, claim, worker_id)
        )
        await self._process(claim, worker_id, stub, follow=follow)

    async def _requeue(
        self,
        claim: queue.Claim,
        worker_id: str,
        reason: str,
        message: str,
        wait: float,
        final: bool = False,
    ) -> None:
        await self._record(
            claim,
            Usage(),
            lambda tx: outcomes.record_decline(
                tx, claim, worker_id, reason, message, wait, final=final
            ),
        )

    async def _handshake(
        self,
        claim: queue.Claim,
        worker_id: str,
        stub: worker_pb2_grpc.WorkerServiceAsyncStub,
        has_alternative: bool,
    ) -> worker_pb2.HandshakeResponse | None:
        """Offers the stage; returns the acceptance, or None after a decline or a failed call.
        On a decline, uses the reason: another worker now, a back-off from the retry hint, or
        failing the stage when its input is invalid."""
        try:
            answer = await stub.Handshake(
                self._offer(claim),
                timeout=self.settings.peers.rpc_timeout,
                metadata=service_metadata(self.settings),
            )
        except grpc.aio.AioRpcError as error:
            # An unreachable worker gets no offers until its next heartbeat proves it alive.
            await self.db.run(lambda s: registry.mark_unhealthy(s, worker_id))
            self.workers_changed()
            await self._requeue(
                claim, worker_id, "UNREACHABLE", f"handshake failed: {error.code().name}", 0.0
            )
            return None
        if answer.accepted:
            return answer
        reason = worker_pb2.DeclineReason.Name(answer.decline_reason).removeprefix(
            "DECLINE_REASON_"
        )
        wait = convert.seconds(answer.retry_after)
        now = asyncio.get_running_loop().time()
        self.declined.setdefault(claim.stage_id, {})[worker_id] = now + max(wait, 1.0)
        await self._requeue(
            claim,
            worker_id,
            reason,
            answer.message,
            0.0 if has_alternative else wait,
            final=reason in FINAL_DECLINES,
        )
        return None

    async def _process(
        self,
        claim: queue.Claim,
        worker_id: str,
        stub: worker_pb2_grpc.WorkerServiceAsyncStub,
        *,
        follow: bool = True,
    ) -> None:
        follower = asyncio.create_task(self._follow(stub, claim)) if follow else None
        started = asyncio.get_running_loop().time()
        outcome = "error"
        try:
            response = await stub.Process(
                worker_pb2.ProcessRequest(stage=self._ref(claim)),
                timeout=claim.timeout_s,
                metadata=service_metadata(self.settings),
            )
            outcome = response.WhichOneof("outcome") or "error"
        except grpc.aio.AioRpcError as error:
            outcome = error.code().name.lower()
            if claim.reattach_worker and error.code() in _LOST_ATTEMPT:
                # The worker no longer has the attempt: offer it afresh.
                await self._requeue(claim, worker_id, "REATTACH_FAILED", "attempt lost", 0.0)
                return
            timed_out = error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = "STAGE_TIMEOUT" if timed_out else f"WORKER_{error.code().name}"
            message = error.details() or error.code().name
            status = AttemptStatus.TIMED_OUT if timed_out else AttemptStatus.FAILED
            # Out of time: the worker is told to stop and says what the attempt used so far.
            spent = await self._stop(stub, claim, "stage timeout") if timed_out else Usage()
            failure = StageError("TRANSIENT", reason, message)
            await self._fail(claim, failure, status=status, usage=spent)
            return
        finally:
            self._stage_seconds.labels(claim.capability, outcome).observe(
                asyncio.get_running_loop().time() - started
            )
            if follower is not None:
                # The worker's stream ends after its terminal event; let it deliver what is
                # left (a fast stage finishes before its progress is read), but never wait long.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(follower), FOLLOW_GRACE_SECONDS)
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
        self.declined.pop(claim.stage_id, None)
        ended = StageOutcome.from_proto(response)
        if ended.error is not None:
            await self._fail(claim, ended.error, usage=ended.usage)
            return
        await self._record(claim, ended.usage, lambda tx: outcomes.record_result(tx, claim, ended))

    async def _follow(
        self, stub: worker_pb2_grpc.WorkerServiceAsyncStub, claim: queue.Claim
    ) -> None:
        """Re-publishes the worker's progress events on the execution's log. The stream is asked
        for batches (several events per message; an older worker sends one per message, which
        reads the same). Events that arrive while the previous ones are being written go into
        the log together, in one transaction, so a chatty worker costs few writes."""
        call = stub.WatchProgress(
            worker_pb2.WatchProgressRequest(stage=self._ref(claim), batched=True),
            metadata=service_metadata(self.settings),
        )
        pending: list[tuple[str, str, float]] = []
        arrived = asyncio.Event()
        ended = False

        async def write() -> None:
            while pending or not ended:
                await arrived.wait()
                arrived.clear()
                batch, pending[:] = pending[:], []
                if batch:
                    await self._db(
                        functools.partial(outcomes.record_progress, claim=claim, events=batch)
                    )

        writer = asyncio.create_task(write())
        try:
            async for message in call:
                if message.events:
                    events = list(message.events)
                else:  # one event per message: a worker that does not batch
                    events = [message.event] if message.HasField("event") else []
                for event in events:
                    phase = worker_pb2.Phase.Name(event.phase).removeprefix("PHASE_").lower()
                    pending.append((phase, event.message, event.fraction))
                arrived.set()
        except grpc.aio.AioRpcError:
            pass  # progress is best effort; the outcome comes from Process
        finally:
            call.cancel()
            ended = True
            arrived.set()
            try:
                await writer  # write what has arrived
            except StaleAttempt:
                pass
            finally:
                writer.cancel()

    async def _stop(
        self, stub: worker_pb2_grpc.WorkerServiceAsyncStub, claim: queue.Claim, reason: str
    ) -> Usage:
        """Tells the worker to stop the attempt; returns what the attempt consumed, as the
        worker reports it (empty when the worker cannot be reached)."""
        try:
            answer = await stub.Cancel(
                worker_pb2.CancelRequest(stage=self._ref(claim), reason=reason),
                timeout=self.settings.peers.rpc_timeout,
                metadata=service_metadata(self.settings),
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "worker cancel failed", extra={"stage": claim.stage_id, "code": error.code().name}
            )
            return Usage()
        return Usage.from_proto(answer.usage)

    async def cancel_running(
        self, stage_ids: list[str], reason: AttemptStatus = AttemptStatus.CANCELLED
    ) -> None:
        """Tells the workers of stopped stages (`reason`: cancelled or timed_out) to stop, records
        what their attempts consumed, then stops waiting for them."""
        for stage_id in stage_ids:
            entry = self.running.get(stage_id)
            if entry is None:
                continue
            task, claim, address = entry
            spent = Usage()
            if address:
                why = (
                    "execution cancelled"
                    if reason == AttemptStatus.CANCELLED
                    else "execution timed out"
                )
                spent = await self._stop(self.stub(address), claim, why)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self._db(
                functools.partial(outcomes.record_stopped, claim=claim, status=reason, usage=spent)
            )
