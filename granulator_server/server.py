"""Builds, starts and stops the granulator, and keeps it registered with the orchestrator."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import grpc

from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.orchestrator.v1 import registry_pb2, registry_pb2_grpc
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware_core import convert
from bitware_core.auth import ADMIN, READERS, SERVICE, KamAuthenticator
from bitware_core.channels import open_channel, service_metadata
from bitware_core.config import Settings, SettingsError
from bitware_core.db import Database
from bitware_core.kam import KamConnection
from bitware_core.metrics import new_registry
from bitware_core.server import MeshServer, Service, run_process
from granulator_server import models, template_store
from granulator_server.offers import capacity
from granulator_server.pricing import PriceTable
from granulator_server.providers import ModelMetrics, choose_provider
from granulator_server.service import GranulatorHandlers
from granulator_server.stages import CAPABILITIES
from granulator_server.worker import WorkerHandlers

log = logging.getLogger("bitware.granulator")
SERVICES_ONLY = frozenset({SERVICE})
VERSION = "0.1.0"
#: How often a granulator marks its running jobs alive and ends the jobs nobody marks alive.
JOB_TOUCH_SECONDS = 30.0
#: A running job that no granulator marked alive for this long has lost its granulator.
JOB_STALE_SECONDS = 150.0


class GranulatorServer(MeshServer):
    def __init__(self, settings: Settings) -> None:
        metrics = new_registry()
        try:  # settings first: a wrong one stops the server before anything starts
            prices = PriceTable.with_overrides(settings.providers.price_table)
            self.provider = choose_provider(settings, prices, ModelMetrics(metrics))
            self.capacity = capacity(
                settings.granulator.max_concurrent_jobs,
                settings.granulator.max_model_calls,
                self.provider,
            )
            if settings.granulator.cpu_jobs < 0:
                raise ValueError(
                    f"BITWARE_CPU_JOBS must be 0 or more, got {settings.granulator.cpu_jobs}"
                )
        except ValueError as error:  # each names the variable that is wrong
            raise SettingsError(str(error)) from None
        self.db = Database(settings.storage.database_url_for("granulator"))
        self.kam = KamConnection(settings)
        self.worker = WorkerHandlers(
            self.db,
            self.provider,
            self.capacity,
            settings.auth.worker_id,
            settings.granulator.cpu_jobs or os.cpu_count() or 1,
        )
        handlers = GranulatorHandlers(self.db)
        services = [
            Service(
                worker_pb2.DESCRIPTOR.services_by_name["WorkerService"],
                lambda server: worker_pb2_grpc.add_WorkerServiceServicer_to_server(
                    self.worker, server
                ),
                {
                    "Handshake": SERVICES_ONLY,
                    "Process": SERVICES_ONLY,
                    "WatchProgress": SERVICES_ONLY,
                    "Cancel": SERVICES_ONLY,
                },
            ),
            Service(
                granulator_pb2.DESCRIPTOR.services_by_name["GranulatorService"],
                lambda server: granulator_pb2_grpc.add_GranulatorServiceServicer_to_server(
                    handlers, server
                ),
                {
                    "GetJob": READERS,
                    "ListJobs": READERS,
                    "GetStructure": READERS,
                    "ListModelCalls": READERS,
                    "ListTemplates": READERS,
                    "GetTemplate": READERS,
                    "CreateTemplate": frozenset({ADMIN}),
                    "UpdateTemplate": frozenset({ADMIN}),
                },
            ),
        ]
        authenticator = KamAuthenticator(self.kam.authenticate, settings.auth.cache_seconds)
        super().__init__(settings, services, authenticator, "granulator.bitware", metrics)
        self._registration: asyncio.Task[None] | None = None
        self._tending: asyncio.Task[None] | None = None
        self.job_touch_seconds, self.job_stale_seconds = JOB_TOUCH_SECONDS, JOB_STALE_SECONDS
        self._orchestrator: grpc.aio.Channel | None = None

    async def start(self) -> int:
        with self.db.exclusive("granulator start-up"):
            self.db.migrate(
                "granulator",
                str(Path(__file__).parent / "migrations"),
                models.GranulatorBase.metadata,
            )
            added = await self.db.run(template_store.seed)
        if added:
            log.info("seeded structure templates", extra={"count": added})
        ended = await self.worker.runner.end_left_running()
        if ended:
            log.warning(
                "ended jobs a previous process of this worker left running",
                extra={"count": ended, "reason": "WORKER_RESTARTED"},
            )
        log.info(
            "generating with the %s provider",
            self.provider.name,
            extra={"provider": self.provider.name, "model": self.provider.model},
        )
        port = await super().start()
        self._tending = asyncio.create_task(self._tend_jobs())
        if self.settings.peers.orchestrator_address:
            self._orchestrator = open_channel(
                self.settings.peers.orchestrator_address, self.settings
            )
            self._registration = asyncio.create_task(self._stay_registered())
        return port

    async def _stay_registered(self) -> None:
        """Registers with the orchestrator, then sends heartbeats; registers again whenever the
        orchestrator forgets it (for example after a restart with a fresh database)."""
        assert self._orchestrator is not None
        stub = registry_pb2_grpc.WorkerRegistryServiceStub(self._orchestrator)
        metadata = service_metadata(self.settings)
        address = self.settings.server.advertise_address or self.address
        registered, interval = False, 1.0
        while True:
            try:
                if not registered:
                    response = await stub.RegisterWorker(
                        registry_pb2.RegisterWorkerRequest(
                            worker_id=self.settings.auth.worker_id,
                            name=self.settings.auth.worker_id,
                            address=address,
                            capabilities=list(CAPABILITIES),
                            max_concurrency=self.capacity,
                            version=VERSION,
                        ),
                        timeout=self.settings.peers.rpc_timeout,
                        metadata=metadata,
                        wait_for_ready=True,
                    )
                    interval = convert.seconds(response.heartbeat_interval)
                    registered = True
                    log.info("registered with the orchestrator", extra={"address": address})
                else:
                    beat = await stub.Heartbeat(
                        registry_pb2.HeartbeatRequest(
                            worker_id=self.settings.auth.worker_id,
                            active_stages=self.worker.slots.active,
                        ),
                        timeout=self.settings.peers.rpc_timeout,
                        metadata=metadata,
                        wait_for_ready=True,
                    )
                    if beat.state == registry_pb2.WORKER_STATE_DEREGISTERED:
                        # An operator took this worker out: stay out (no re-registering).
                        log.info("deregistered by the orchestrator; taking no more work")
                        self.worker.slots.draining = True
                        return
            except grpc.aio.AioRpcError as error:
                registered = registered and error.code() != grpc.StatusCode.NOT_FOUND
                log.warning("orchestrator not reachable", extra={"code": error.code().name})
                interval = 1.0
            await asyncio.sleep(interval)

    async def _tend_jobs(self) -> None:
        """Keeps this worker's running jobs marked alive, and ends the running jobs of
        granulators that died for good (a restarted one ends its own at start-up)."""
        while True:
            await asyncio.sleep(self.job_touch_seconds)
            try:
                ended = await self.worker.runner.tend_jobs(self.job_stale_seconds)
            except Exception:  # e.g. the database is away for now: try again next time
                log.exception("tending the running jobs failed")
                continue
            if ended:
                log.warning(
                    "ended running jobs whose granulator was lost",
                    extra={"count": ended, "reason": "WORKER_LOST"},
                )

    async def _leave(self) -> None:
        """Tells the orchestrator to stop offering work here; current work finishes."""
        if self._orchestrator is None:
            return
        stub = registry_pb2_grpc.WorkerRegistryServiceStub(self._orchestrator)
        try:
            await stub.DeregisterWorker(
                registry_pb2.DeregisterWorkerRequest(
                    worker_id=self.settings.auth.worker_id, drain=True
                ),
                timeout=2.0,
                metadata=service_metadata(self.settings),
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not deregister from the orchestrator", extra={"code": error.code().name}
            )

    async def stop(self, grace: float | None = None) -> None:
        self.worker.slots.draining = True
        await self._leave()
        for task in (self._registration, self._tending):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await super().stop(grace)
        if self._orchestrator is not None:
            await self._orchestrator.close()
        await self.kam.close()
        await self.provider.close()
        self.db.close()


async def serve(settings: Settings) -> GranulatorServer:
    server = GranulatorServer(settings)
    await server.start()
    return server


def main() -> None:
    run_process("granulator", GranulatorServer)
