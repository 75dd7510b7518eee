"""The gateway's upstream servers: one long-lived `grpc.aio` channel to each, opened at start-up
(the app's lifespan) and closed at shutdown, and the stubs every route calls through.

Granulators are replicas: every granulator of a mesh reads the same job store, so jobs and
structures are read from whichever answers (`Replicas`), not from one fixed address."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitware.granulator.v1 import granulator_pb2_grpc
from bitware.kam.v1 import (
    accounts_pb2_grpc,
    auth_pb2_grpc,
    requests_pb2_grpc,
    templates_pb2_grpc,
    webhooks_pb2_grpc,
)
from bitware.orchestrator.v1 import orchestrator_pb2_grpc, registry_pb2_grpc
from bitware_core.channels import open_channel
from bitware_core.config import Settings

#: How long /healthz waits for each upstream's health answer, in seconds.
HEALTH_TIMEOUT = 2.0


S = TypeVar("S")
T = TypeVar("T")


class UpstreamNotConfigured(ValueError):
    """An upstream address is missing from the settings."""


class Replicas(Generic[S]):
    """Channels to every replica of one server, each with its stub `S`. Calls go round-robin,
    replicas whose connection has failed last; a call that finds a replica unavailable is made
    again on the next one, so one stopped or restarting replica costs no caller an error."""

    def __init__(
        self, addresses: list[str], settings: Settings, stub: Callable[[grpc.aio.Channel], S]
    ) -> None:
        self.channels = [open_channel(address, settings) for address in addresses]
        self.stubs = [stub(channel) for channel in self.channels]
        self._turn = itertools.count()

    def _order(self) -> list[int]:
        count = len(self.channels)
        start = next(self._turn) % count
        turn = [(start + step) % count for step in range(count)]
        failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return sorted(turn, key=lambda index: self.channels[index].get_state() == failed)

    async def call(self, invoke: Callable[[S, float], Awaitable[T]], within: float) -> T:
        """`invoke(stub, seconds_left)` on one replica after another until one is reachable;
        the last UNAVAILABLE error when none is. `within` (seconds) bounds all the tries."""
        deadline = time.monotonic() + within
        unavailable: grpc.aio.AioRpcError | None = None
        for index in self._order():
            left = deadline - time.monotonic()
            if left <= 0 and unavailable is not None:
                break
            try:
                return await invoke(self.stubs[index], max(left, 0.0))
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                unavailable = error
        assert unavailable is not None
        raise unavailable

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))


def addresses(settings: Settings) -> dict[str, str]:
    """Upstream name → address (the granulators' comma-separated); refuses to start without all
    three (a half-configured gateway would fail on some routes only, which is harder to notice
    than failing at once)."""
    granulators = [a.strip() for a in settings.peers.granulator_address.split(",") if a.strip()]
    found = {
        "kam": settings.peers.kam_address,
        "orchestrator": settings.peers.orchestrator_address,
        "granulator": ",".join(granulators),
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
            name: open_channel(self.addresses[name], settings) for name in ("kam", "orchestrator")
        }
        kam = self.channels["kam"]
        self.auth = auth_pb2_grpc.AuthServiceStub(kam)
        self.users = accounts_pb2_grpc.UserServiceStub(kam)
        self.clients = accounts_pb2_grpc.ClientServiceStub(kam)
        self.api_keys = accounts_pb2_grpc.ApiKeyServiceStub(kam)
        self.templates = templates_pb2_grpc.TemplateServiceStub(kam)
        self.requests = requests_pb2_grpc.RequestServiceStub(kam)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(kam)
        orchestrator = self.channels["orchestrator"]
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        self.registry = registry_pb2_grpc.WorkerRegistryServiceStub(orchestrator)
        self.granulators = Replicas(
            self.addresses["granulator"].split(","),
            settings,
            granulator_pb2_grpc.GranulatorServiceStub,
        )

    async def close(self) -> None:
        await asyncio.gather(
            *(channel.close() for channel in self.channels.values()), self.granulators.close()
        )

    async def _check(self, channel: grpc.aio.Channel) -> str:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        return "ok" if answer.status == health_pb2.HealthCheckResponse.SERVING else status

    async def _check_granulators(self) -> str:
        """`ok` while any granulator serves (any of them answers for all)."""
        answers = await asyncio.gather(*(self._check(c) for c in self.granulators.channels))
        return "ok" if "ok" in answers else "; ".join(answers)

    async def health(self) -> dict[str, str]:
        """Upstream name → `ok` or what is wrong, asked of every upstream at once."""
        names = list(self.channels)
        answers = await asyncio.gather(
            *(self._check(self.channels[name]) for name in names), self._check_granulators()
        )
        return dict(zip([*names, "granulator"], answers, strict=True))
