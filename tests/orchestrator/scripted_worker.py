"""A second kind of worker for orchestrator tests: a real gRPC server that implements the public
`bitware.worker.v1.WorkerService` contract from a script (decline, fail, score low, stall), and
registers itself with the orchestrator like any worker. It is what a third-party worker would
be; it lets tests drive the orchestrator through paths the granulator rarely takes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, accounts_pb2_grpc
from bitware.orchestrator.v1 import registry_pb2, registry_pb2_grpc
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core import convert
from bitware_mesh.inprocess import InProcessMesh

#: What an attempt stopped midway reports to have consumed.
PARTIAL_USAGE = common_pb2.Usage(
    provider="scripted", model="script", prompt_tokens=4, completion_tokens=2, cost_micros=400
)


@dataclass
class Step:
    """What the worker does with one offer: decline it, or accept and then answer."""

    decline: int = 0  # a worker_pb2.DeclineReason; 0 accepts
    retry_after: float = 0.0
    delay: float = 0.0
    score: float = 90.0
    integrity_failed: bool = False
    accept_below_minimum: bool = False
    error_class: int = 0  # a worker_pb2.ErrorClass; 0 returns a result
    reason: str = "SCRIPTED"
    output_bytes: int = 0  # the size of a filler field in the output
    #: The fractions of the GENERATING progress events its WatchProgress stream reports.
    progress: tuple[float, ...] = (0.5,)
    #: Says in the Handshake that it reports no progress for the attempt.
    no_progress: bool = False


@dataclass
class ScriptedWorker(worker_pb2_grpc.WorkerServiceServicer):
    worker_id: str
    capability: str
    steps: list[Step] = field(default_factory=list)
    default: Step = field(default_factory=Step)
    offers: list[worker_pb2.HandshakeRequest] = field(default_factory=list)
    processed: list[worker_pb2.ProcessRequest] = field(default_factory=list)
    cancelled: list[worker_pb2.CancelRequest] = field(default_factory=list)
    watches: list[worker_pb2.WatchProgressRequest] = field(default_factory=list)
    #: WatchProgress messages sent.
    progress_messages: int = 0
    #: Answers one event per message whatever the request says, as a worker older than
    #: `WatchProgressRequest.batched` does.
    ignores_batched: bool = False
    server: grpc.aio.Server | None = None
    address: str = ""
    health: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    _accepted: dict[tuple[str, int], Step] = field(default_factory=dict)
    _work: dict[tuple[str, int], asyncio.Future[worker_pb2.ProcessResponse]] = field(
        default_factory=dict
    )
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Stages being processed now, and the most at once, per client.
    active: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    _client_of: dict[tuple[str, int], str] = field(default_factory=dict)

    async def Handshake(
        self, request: worker_pb2.HandshakeRequest, context: Any
    ) -> worker_pb2.HandshakeResponse:
        self.offers.append(request)
        step = self.steps.pop(0) if self.steps else self.default
        if step.decline:
            response = worker_pb2.HandshakeResponse(
                accepted=False,
                decline_reason=step.decline,
                message="scripted decline",  # type: ignore[arg-type]
                worker_id=self.worker_id,
            )
            response.retry_after.CopyFrom(convert.duration(step.retry_after))
            return response
        self._accepted[(request.stage.stage_id, request.stage.attempt)] = step
        self._client_of[(request.stage.stage_id, request.stage.attempt)] = request.client_id
        return worker_pb2.HandshakeResponse(
            accepted=True, worker_id=self.worker_id, no_progress=step.no_progress
        )

    async def Process(
        self, request: worker_pb2.ProcessRequest, context: Any
    ) -> worker_pb2.ProcessResponse:
        """Idempotent per (stage, attempt), as the contract asks: a repeated call (for example
        from a restarted orchestrator re-attaching) joins the same work."""
        key = (request.stage.stage_id, request.stage.attempt)
        if key not in self._work:
            self.processed.append(request)
            self._work[key] = asyncio.ensure_future(self._run(request, self._accepted[key]))
        return await asyncio.shield(self._work[key])

    async def _run(
        self, request: worker_pb2.ProcessRequest, step: Step
    ) -> worker_pb2.ProcessResponse:
        client = self._client_of.get((request.stage.stage_id, request.stage.attempt), "")
        self.active[client] += 1
        self.peak[client] = max(self.peak[client], self.active[client])
        try:
            await asyncio.sleep(step.delay)
        finally:
            self.active[client] -= 1
        usage = common_pb2.Usage(
            provider="scripted",
            model="script",
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.001,
        )
        if step.error_class:
            return worker_pb2.ProcessResponse(
                error=worker_pb2.StageError(
                    error_class=step.error_class,
                    reason=step.reason,  # type: ignore[arg-type]
                    message="scripted failure",
                ),
                usage=usage,
            )
        result = worker_pb2.StageResult(
            job_id=f"job-{request.stage.stage_id}-{request.stage.attempt}"
        )
        result.output.update({"attempt": request.stage.attempt, "filler": "x" * step.output_bytes})
        result.quality.score = step.score
        result.quality.integrity_failed = step.integrity_failed
        result.quality.accept_below_minimum = step.accept_below_minimum
        result.quality.feedback = f"attempt {request.stage.attempt} scored {step.score}"
        return worker_pb2.ProcessResponse(result=result, usage=usage)

    async def WatchProgress(
        self, request: worker_pb2.WatchProgressRequest, context: Any
    ) -> AsyncIterator[worker_pb2.WatchProgressResponse]:
        """Reports the step's progress events at once: all in one message when asked for
        batches, else one per message."""
        self.watches.append(request)
        step = self._accepted.get((request.stage.stage_id, request.stage.attempt), self.default)
        events = [
            worker_pb2.ProgressEvent(
                sequence=number,
                phase=worker_pb2.PHASE_GENERATING,
                message="working",
                fraction=fraction,
            )
            for number, fraction in enumerate(step.progress, start=1)
        ]
        if request.batched and not self.ignores_batched:
            self.progress_messages += 1
            yield worker_pb2.WatchProgressResponse(events=events)
            return
        for event in events:
            self.progress_messages += 1
            yield worker_pb2.WatchProgressResponse(event=event)

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: Any
    ) -> worker_pb2.CancelResponse:
        """Stops the attempt; one still working reports `PARTIAL_USAGE`, as a worker reports
        what the work consumed until it stopped."""
        self.cancelled.append(request)
        work = self._work.get((request.stage.stage_id, request.stage.attempt))
        if work is None or work.done():
            return worker_pb2.CancelResponse(cancelled=False)
        work.cancel()
        return worker_pb2.CancelResponse(cancelled=True, usage=PARTIAL_USAGE)

    async def start(
        self, mesh: InProcessMesh, admin: tuple[tuple[str, str], ...], max_concurrency: int = 4
    ) -> None:
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_send_message_length", 64 * 2**20)]
        )
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(self, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(mesh.kam.address) as kam:
            created = await accounts_pb2_grpc.WorkerCredentialServiceStub(
                kam
            ).CreateWorkerCredential(
                accounts_pb2.CreateWorkerCredentialRequest(worker_id=self.worker_id),
                metadata=admin,
                timeout=10,
            )
        self.metadata = (
            ("authorization", f"Bearer {created.token}"),
            ("x-worker-id", self.worker_id),
        )
        self.channel = grpc.aio.insecure_channel(mesh.orchestrator.address)
        self.registry = registry_pb2_grpc.WorkerRegistryServiceStub(self.channel)
        await self.registry.RegisterWorker(
            registry_pb2.RegisterWorkerRequest(
                worker_id=self.worker_id,
                address=self.address,
                capabilities=[self.capability],
                max_concurrency=max_concurrency,
                version="test",
            ),
            metadata=self.metadata,
            timeout=10,
        )
        self._tasks.append(asyncio.create_task(self._heartbeats()))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            busy = sum(1 for work in self._work.values() if not work.done())
            await self.registry.Heartbeat(
                registry_pb2.HeartbeatRequest(worker_id=self.worker_id, active_stages=busy),
                metadata=self.metadata,
                timeout=5,
            )

    async def leave(self, drain: bool = True) -> registry_pb2.Worker:
        response = await self.registry.DeregisterWorker(
            registry_pb2.DeregisterWorkerRequest(worker_id=self.worker_id, drain=drain),
            metadata=self.metadata,
            timeout=5,
        )
        return response.worker

    async def stop(self, heartbeats_only: bool = False) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if heartbeats_only:
            return
        if self.server is not None:
            await asyncio.wait_for(self.server.stop(0), 5)
        await self.channel.close()
