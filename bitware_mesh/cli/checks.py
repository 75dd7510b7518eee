"""`bitware status`, `bitware workers`, `bitware queue`: what a person checks first when
something is stuck. `status` needs no credential (grpc.health and the gateway's /healthz);
`workers` needs an admin or support session; `queue` any credential."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware_core import convert
from bitware_mesh.cli.common import (
    CALL_TIMEOUT,
    CliError,
    MeshAddresses,
    add_client_arguments,
    as_json,
    bar,
    connected,
    find_mesh,
    grpc_channel,
    open_client,
    print_json,
    words,
)
from bitware_mesh.cli.output import print_table

#: How long one health check may take, in seconds.
HEALTH_TIMEOUT = 3.0


def add_checks(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, handler, text in (
        ("status", status_command, "is every server of the mesh up and serving?"),
        ("workers", workers_command, "registered workers with their state and load (staff)"),
        ("queue", queue_command, "queue depth per priority and the oldest wait"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        add_client_arguments(command)
        command.set_defaults(handler=handler)


# ---------------------------------------------------------------- status


@dataclass
class Health:
    name: str
    address: str
    state: str  # "serving", "not serving", "unreachable", …
    detail: str = ""
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "serving"


async def grpc_health(args: argparse.Namespace, name: str, address: str) -> Health:
    started = time.perf_counter()
    async with grpc_channel(args, address) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            state = "unreachable" if error.code() == grpc.StatusCode.UNAVAILABLE else "failing"
            return Health(name, address, state, f"{error.code().name}: {error.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    elapsed = (time.perf_counter() - started) * 1000
    return Health(name, address, words(status, ""), ms=elapsed)


def _get_healthz(address: str, ca: str | None) -> tuple[int, dict[str, Any]]:
    """GET /healthz; over HTTPS, verified with `ca`, when the command was given --tls-ca."""
    url = f"{'https' if ca else 'http'}://{address}/healthz"
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT, context=context) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:  # 503 still carries the body saying what fails
        return error.code, json.loads(error.read() or b"{}")


async def gateway_health(args: argparse.Namespace, address: str) -> Health:
    started = time.perf_counter()
    try:
        status, body = await asyncio.to_thread(_get_healthz, address, args.tls_ca)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return Health("gateway", address, "unreachable", str(reason))
    elapsed = (time.perf_counter() - started) * 1000
    if status == 200:
        return Health("gateway", address, "serving", ms=elapsed)
    failing = ", ".join(body.get("failing", [])) or f"HTTP {status}"
    return Health("gateway", address, "degraded", f"its upstreams failing: {failing}", elapsed)


async def check_all(args: argparse.Namespace, mesh: MeshAddresses) -> list[Health]:
    checks = [grpc_health(args, "kam", mesh.kam)] if mesh.kam else []
    if mesh.orchestrator:
        checks.append(grpc_health(args, "orchestrator", mesh.orchestrator))
    checks += [grpc_health(args, name, address) for name, address in mesh.granulators.items()]
    if mesh.gateway:
        checks.append(gateway_health(args, mesh.gateway))
    if not checks:
        raise CliError("no server to check: give --kam, --orchestrator, --granulator or --gateway")
    return list(await asyncio.gather(*checks))


async def _summary(args: argparse.Namespace, mesh: MeshAddresses) -> list[str]:
    """Queue and worker counts, when a credential allows; never fails the status."""
    if not mesh.kam or not mesh.orchestrator:
        return []
    lines = []
    try:
        async with connected(args, mesh, prefer_admin=True) as (_, channel, metadata, kind):
            queue = await orchestrator_pb2_grpc.OrchestratorServiceStub(channel).GetQueue(
                orchestrator_pb2.GetQueueRequest(), metadata=metadata, timeout=CALL_TIMEOUT
            )
            lines.append(
                f"queue          {queue.total_depth} waiting · {queue.running} running · "
                f"{queue.retry_waiting} waiting to retry"
            )
            if kind == "admin":
                workers = (
                    await registry_pb2_grpc.WorkerRegistryServiceStub(channel).ListWorkers(
                        registry_pb2.ListWorkersRequest(), metadata=metadata, timeout=CALL_TIMEOUT
                    )
                ).workers
                healthy = sum(w.state == registry_pb2.WORKER_STATE_HEALTHY for w in workers)
                lines.append(f"workers        {healthy} healthy of {len(workers)} registered")
    except CliError:
        lines.append("(set BITWARE_API_KEY or BITWARE_ADMIN_PASSWORD to see the queue here too)")
    except grpc.aio.AioRpcError as error:
        lines.append(f"queue          not shown: {error.code().name}: {error.details()}")
    return lines


async def status_command(args: argparse.Namespace) -> int:
    mesh = find_mesh(args)
    results = await check_all(args, mesh)
    failing = [h for h in results if not h.ok]
    if args.json:
        print_json({"source": mesh.source, "servers": [h.__dict__ for h in results]})
    else:
        print(f"mesh from {mesh.source}")
        if mesh.supervisor_pid and not mesh.supervisor_running:
            print(f"note: the `bitware up` that wrote it (pid {mesh.supervisor_pid}) has exited")
        for health in results:
            said = f"{health.ms:5.0f} ms" if health.ok else health.detail
            print(f"{health.name:<14} {health.address:<22} {health.state:<12} {said}")
        if not failing:
            for line in await _summary(args, mesh):
                print(line)
    if failing:
        names = ", ".join(f"{h.name} {h.state}" for h in failing)
        raise CliError(f"{len(failing)} of {len(results)} servers not serving: {names}")
    return 0


# ---------------------------------------------------------------- workers


def _age(stamp: datetime) -> str:
    if stamp.year < 2000:
        return "never"
    seconds = (datetime.now(UTC) - stamp.replace(tzinfo=UTC)).total_seconds()
    return f"{max(0.0, seconds):.1f}s ago"


async def workers_command(args: argparse.Namespace) -> int:
    async with open_client(args, prefer_admin=True) as (client, _, _):
        workers = await client.workers()
    if args.json:
        print_json({"workers": [as_json(w) for w in workers]})
        return 0
    if not workers:
        print("no workers registered: no stage can run until a granulator starts")
        return 0
    rows = []
    for worker in workers:
        fraction = worker.active_stages / worker.max_concurrency if worker.max_concurrency else 0
        rows.append(
            (
                worker.worker_id,
                words(registry_pb2.WorkerState.Name(worker.state), "WORKER_STATE_"),
                f"{bar(fraction, 8)[:10]} {worker.active_stages}/{worker.max_concurrency}",
                _age(worker.last_heartbeat_time.ToDatetime()),
                ", ".join(worker.capabilities),
            )
        )
    print_table(("WORKER", "STATE", "LOAD", "LAST HEARTBEAT", "CAPABILITIES"), rows)
    return 0


# ---------------------------------------------------------------- queue


async def queue_command(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        queue = await client.queue()
    if args.json:
        print_json(as_json(queue))
        return 0
    rows = []
    for level in queue.levels:
        wait = convert.seconds(level.oldest_wait)
        rows.append(
            (
                words(common_pb2.Priority.Name(level.priority), "PRIORITY_"),
                level.depth,
                f"{wait:.1f}s" if level.depth else "—",
            )
        )
    print_table(("PRIORITY", "WAITING", "OLDEST WAIT"), rows)
    print(
        f"total {queue.total_depth} waiting · {queue.running} running · "
        f"{queue.retry_waiting} waiting to retry"
    )
    return 0
