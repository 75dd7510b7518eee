"""The gateway's upstream servers: one long-lived `grpc.aio` channel to each, opened at start-up
(the app's lifespan) and closed at shutdown, and the stubs every route calls through."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitware.granulator.v1 import granulator_pb2_grpc
from bitware.kam.v1 import accounts_pb2_grpc, auth_pb2_grpc, requests_pb2_grpc, templates_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2_grpc, registry_pb2_grpc
from bitware_core.channels import open_channel
from bitware_core.config import Settings

#: How long /healthz waits for each upstream's health answer, in seconds.
HEALTH_TIMEOUT = 2.0


class UpstreamNotConfigured(ValueError):
    """An upstream address is missing from the settings."""


def addresses(settings: Settings) -> dict[str, str]:
    """Upstream name → address; refuses to start without all three (a half-configured gateway
    would fail on some routes only, which is harder to notice than failing at once)."""
    found = {
        "kam": settings.kam_address,
        "orchestrator": settings.orchestrator_address,
        "granulator": settings.granulator_address,
    }
    missing = [f"BITWARE_{name.upper()}_ADDRESS" for name, address in found.items() if not address]
    if missing:
        raise UpstreamNotConfigured(f"the gateway needs {', '.join(missing)}")
    return found


class Upstream:
    """Channels and stubs. Build it inside a running event loop; `close()` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.addresses = addresses(settings)
        self.channels: dict[str, grpc.aio.Channel] = {
            name: open_channel(address, settings) for name, address in self.addresses.items()
        }
        kam = self.channels["kam"]
        self.auth = auth_pb2_grpc.AuthServiceStub(kam)
        self.users = accounts_pb2_grpc.UserServiceStub(kam)
        self.clients = accounts_pb2_grpc.ClientServiceStub(kam)
        self.api_keys = accounts_pb2_grpc.ApiKeyServiceStub(kam)
        self.templates = templates_pb2_grpc.TemplateServiceStub(kam)
        self.requests = requests_pb2_grpc.RequestServiceStub(kam)
        orchestrator = self.channels["orchestrator"]
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        self.registry = registry_pb2_grpc.WorkerRegistryServiceStub(orchestrator)
        self.granulator = granulator_pb2_grpc.GranulatorServiceStub(self.channels["granulator"])

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))

    async def _check(self, name: str) -> str:
        stub = health_pb2_grpc.HealthStub(self.channels[name])
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return "ok" if answer.status == health_pb2.HealthCheckResponse.SERVING else status

    async def health(self) -> dict[str, str]:
        """Upstream name → `ok` or what is wrong, asked of every upstream at once."""
        names = list(self.channels)
        answers = await asyncio.gather(*(self._check(name) for name in names))
        return dict(zip(names, answers, strict=True))
