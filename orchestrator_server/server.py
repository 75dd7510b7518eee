"""Builds, starts and stops the orchestrator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware_core.auth import (
    ADMIN,
    CLIENT,
    READERS,
    SERVICE,
    STAFF,
    WORKER,
    KamAuthenticator,
)
from bitware_core.config import Settings
from bitware_core.db import Database
from bitware_core.metrics import new_registry
from bitware_core.server import MeshServer, Service, run_process
from orchestrator_server import models
from orchestrator_server.dispatch import Dispatcher
from orchestrator_server.events import EventHub
from orchestrator_server.executions import APPENDED, EVENTS_CHANNEL
from orchestrator_server.kam_client import KamClient
from orchestrator_server.service import OrchestratorHandlers, RegistryHandlers

#: Who may start or retry executions: KAM, which admits them (tier, budget, rate) and charges
#: them, and admins. A client goes through KAM's RequestService.
ADMITTERS = frozenset({ADMIN, SERVICE})
#: Who may cancel an execution: its client, an admin, or KAM (RequestService.CancelRequest).
CANCELLERS = frozenset({ADMIN, CLIENT, SERVICE})
#: Who may list the registered workers: the staff and the mesh's own services.
STAFF_AND_SERVICES = STAFF | {SERVICE}


class OrchestratorServer(MeshServer):
    def __init__(self, settings: Settings) -> None:
        self.db = Database(settings.storage.database_url_for("orchestrator"))
        self.kam = KamClient(settings)
        self.hub = EventHub(self.db)
        metrics = new_registry()
        self.dispatcher = Dispatcher(settings, self.db, self.hub, self.kam, metrics)
        handlers = OrchestratorHandlers(self.db, self.hub, self.kam, self.dispatcher)
        registry_handlers = RegistryHandlers(
            self.db,
            self.dispatcher,
            settings.queue.heartbeat_interval,
            settings.queue.heartbeat_timeout,
        )
        services = [
            Service(
                orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
                lambda server: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
                    handlers, server
                ),
                {
                    "ExecutePipeline": ADMITTERS,
                    "GetExecution": READERS,
                    "ListExecutions": READERS,
                    "CancelExecution": CANCELLERS,
                    "RetryExecution": ADMITTERS,
                    "WatchExecution": READERS,
                    "GetQueue": READERS,
                },
            ),
            Service(
                registry_pb2.DESCRIPTOR.services_by_name["WorkerRegistryService"],
                lambda server: registry_pb2_grpc.add_WorkerRegistryServiceServicer_to_server(
                    registry_handlers, server
                ),
                {
                    "RegisterWorker": frozenset({WORKER}),
                    "Heartbeat": frozenset({WORKER}),
                    "ListWorkers": STAFF_AND_SERVICES,
                    "DeregisterWorker": frozenset({ADMIN, WORKER}),
                },
            ),
        ]
        authenticator = KamAuthenticator(self.kam.authenticate, settings.auth.cache_seconds)
        super().__init__(settings, services, authenticator, "orchestrator.bitware", metrics)

    async def start(self) -> int:
        with self.db.exclusive("orchestrator start-up"):
            self.db.migrate(
                "orchestrator",
                str(Path(__file__).parent / "migrations"),
                models.OrchestratorBase.metadata,
            )
        loop = asyncio.get_running_loop()

        def committed(info: dict[str, Any]) -> None:  # runs on the database thread
            if events := info.pop(APPENDED, None):
                loop.call_soon_threadsafe(self.hub.publish, events)

        self.db.on_commit(committed)
        port = await super().start()
        if not self.db.is_sqlite:
            self.hub.listen(self.db.libpq_url(), EVENTS_CHANNEL)
        self.dispatcher.start()
        return port

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        await self.dispatcher.stop()
        await self.hub.close()
        await self.kam.close()
        self.db.close()


async def serve(settings: Settings) -> OrchestratorServer:
    server = OrchestratorServer(settings)
    await server.start()
    return server


def main() -> None:
    run_process("orchestrator", OrchestratorServer)
