"""`bitware up` (run the whole mesh) and `bitware demo` (the main job end to end)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
)
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import Settings
from bitware_mesh import local_model
from bitware_mesh.cli.common import (
    OFFLINE_NOTE,
    CliError,
    add_tls_arguments,
    bar,
    grpc_channel,
    print_tree,
    running_supervisor,
    usage_line,
)
from bitware_mesh.supervisor import ChildFailed, MeshPlan, Supervisor

STRUCTURE_TYPES = ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path")


def say(line: str) -> None:
    # Flushed: `bitware up` is often read through a pipe (a log collector, a test).
    print(line, flush=True)


def add_up(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = commands.add_parser("up", help="start KAM, orchestrator, granulator(s) and gateway")
    up.add_argument("--data", default="data", help="folder for the SQLite files (default ./data)")
    up.add_argument("--postgres", help="PostgreSQL URL for every service instead of SQLite")
    up.add_argument("--granulators", type=int, default=1, help="how many granulator workers")
    up.add_argument("--kam-port", type=int, default=50051, help="0 picks a free port")
    up.add_argument("--orchestrator-port", type=int, default=50052, help="0 picks a free port")
    up.add_argument(
        "--granulator-port", type=int, default=50053, help="the first granulator's; 0 = free"
    )
    up.add_argument("--gateway-port", type=int, default=8080, help="0 picks a free port")
    up.add_argument(
        "--host", default="127.0.0.1", help="address every server binds (default loopback)"
    )
    up.add_argument(
        "--metrics",
        action="store_true",
        help="every server serves Prometheus /metrics on a port of its own (printed)",
    )
    up.add_argument("--log-json", action="store_true", help="servers log JSON lines")
    up.add_argument(
        "--local-model",
        action="store_true",
        help="also run llama.cpp's server with SmolLM2-135M (the `local` extra) and generate "
        "with it",
    )
    up.set_defaults(handler=up_command)


async def up_command(args: argparse.Namespace) -> int:
    if args.granulators < 1:
        raise CliError("--granulators must be at least 1")
    if args.local_model and (problem := local_model.missing()):
        raise CliError(f"--local-model: {problem}")
    data = Path(args.data)
    other = running_supervisor(data)
    if other:
        raise CliError(f"a mesh is already running from {data} (pid {other}); stop it first")
    plan = MeshPlan(
        data_dir=data,
        host=args.host,
        kam_port=args.kam_port,
        orchestrator_port=args.orchestrator_port,
        granulator_port=args.granulator_port,
        gateway_port=args.gateway_port,
        granulators=args.granulators,
        postgres_url=args.postgres or "",
        log_json=args.log_json,
        metrics=args.metrics,
        local_model=args.local_model,
    )
    supervisor = Supervisor(plan, say=say)
    try:
        mesh = await supervisor.start()
    except ChildFailed as error:
        if "cannot listen on" not in error.last_line:
            raise
        flag = error.child.name.split("-")[0]
        raise CliError(f"{error}; choose another with --{flag}-port or stop what uses it") from None
    for child in mesh.children:
        pid = child.process.pid if child.process else 0
        metrics = f"  metrics http://{child.metrics_address}/metrics" if args.metrics else ""
        print(f"{child.name:<14} {child.address:<22} pid {pid}{metrics}")
    # The servers (the gateway too) read BITWARE_TLS_CERT/KEY from the environment they inherit.
    scheme = "https" if Settings.from_env().tls.enabled else "http"
    print(f"dashboard      {scheme}://{mesh.address('gateway')}/")
    print(f"logs           {data / 'logs'}/<server>.log")
    if mesh.admin_password:
        print(f"admin          {mesh.admin_email} / {mesh.admin_password}  (shown once; keep it)")
    say("ready: Bitware Mesh is up (Ctrl-C stops it)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    say("stopping…")
    await supervisor.stop()
    say("stopped")
    return 0


def add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run the main job end to end and show it")
    demo.add_argument("topic", nargs="?", default="AI Development")
    demo.add_argument("--type", choices=STRUCTURE_TYPES, default="course")
    demo.add_argument("--granularity", type=int, choices=range(1, 6), default=3)
    demo.add_argument("--data", help="folder for the demo mesh (default: a temporary one)")
    demo.add_argument("--kam", help="use the running mesh whose KAM is here (host:port)")
    demo.add_argument("--orchestrator", default="127.0.0.1:50052")
    demo.add_argument("--granulator", default="127.0.0.1:50053")
    demo.add_argument("--admin-email", default="admin@bitware.local")
    add_tls_arguments(demo)  # for a running mesh over TLS (--kam)
    demo.set_defaults(handler=demo_command)


async def run_demo(
    kam: str,
    orchestrator: str,
    granulator: str,
    admin_email: str,
    admin_password: str,
    topic: str,
    structure_type: str,
    granularity: int,
    args: argparse.Namespace,
) -> int:
    async with (
        grpc_channel(args, kam) as kam_channel,
        grpc_channel(args, orchestrator) as orchestrator_channel,
        grpc_channel(args, granulator) as granulator_channel,
    ):
        login = await auth_pb2_grpc.AuthServiceStub(kam_channel).Login(
            auth_pb2.LoginRequest(email=admin_email, password=admin_password), timeout=10
        )
        admin = (("x-bitware-session-token", login.session_token),)
        client = (
            await accounts_pb2_grpc.ClientServiceStub(kam_channel).CreateClient(
                accounts_pb2.CreateClientRequest(
                    client=accounts_pb2.Client(
                        company_name="Demo Learning Co",
                        contact_email="demo@bitware.local",
                        tier=common_pb2.TIER_STANDARD,
                        monthly_budget_usd=25.0,
                    )
                ),
                metadata=admin,
                timeout=10,
            )
        ).client
        key = await accounts_pb2_grpc.ApiKeyServiceStub(kam_channel).CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(client_id=client.client_id, name="demo"),
            metadata=admin,
            timeout=10,
        )
        print(f"client {client.client_id} with API key {key.api_key.prefix}…")
        as_client = (("x-api-key", key.key),)
        requests = requests_pb2_grpc.RequestServiceStub(kam_channel)
        created = (
            await requests.CreateRequest(
                requests_pb2.CreateRequestRequest(
                    spec=common_pb2.ContentSpec(
                        topic=topic,
                        audience="beginners",
                        granularity=granularity,
                        structure_type=common_pb2.StructureType.Value(
                            f"STRUCTURE_TYPE_{structure_type.upper()}"
                        ),
                    )
                ),
                metadata=as_client,
                timeout=10,
            )
        ).request
        executed = await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=created.request_id),
            metadata=as_client,
            timeout=10,
        )
        print(f"request {created.request_id} → execution {executed.execution_id}")
        orchestrator_stub = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        watch = orchestrator_stub.WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(
                execution_id=executed.execution_id, batched=True
            ),
            metadata=as_client,
            timeout=300,
        )
        last: orchestrator_pb2.ExecutionEvent | None = None
        try:
            async for message in watch:
                for last in message.events or [message.event]:  # batched, or an older server
                    kind = orchestrator_pb2.EventType.Name(last.type).removeprefix("EVENT_TYPE_")
                    print(
                        f"{bar(last.progress)} #{last.sequence:<3} {kind.lower():<22} "
                        f"{last.message}"
                    )
        finally:
            watch.cancel()
        if last is None or last.type != orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED:
            raise CliError(f"execution did not succeed: {last.message if last else 'no events'}")
        execution = (
            await orchestrator_stub.GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=executed.execution_id),
                metadata=as_client,
                timeout=10,
            )
        ).execution
        structure = await granulator_pb2_grpc.GranulatorServiceStub(
            granulator_channel
        ).GetStructure(
            granulator_pb2.GetStructureRequest(job_id=execution.job_id),
            metadata=as_client,
            timeout=10,
        )
        print()
        print_tree(list(structure.elements))
        print()
        print(
            f"quality {execution.stages[-1].quality.score:.1f}/100 · {len(structure.elements)} "
            f"elements · {usage_line(execution.usage)}"
        )
        if execution.usage.provider == "offline":
            print(OFFLINE_NOTE)
    return 0


async def demo_command(args: argparse.Namespace) -> int:
    if args.kam:
        password = os.environ.get("BITWARE_ADMIN_PASSWORD", "")
        if not password:
            raise CliError(
                "against a running mesh, set BITWARE_ADMIN_PASSWORD (printed by "
                "`bitware up` on its first start)"
            )
        return await run_demo(
            args.kam,
            args.orchestrator,
            args.granulator,
            args.admin_email,
            password,
            args.topic,
            args.type,
            args.granularity,
            args,
        )
    with contextlib.ExitStack() as stack:
        data = args.data or stack.enter_context(tempfile.TemporaryDirectory(prefix="bitware-"))
        plan = MeshPlan(
            data_dir=Path(data), kam_port=0, orchestrator_port=0, granulator_port=0, gateway_port=0
        )
        supervisor = Supervisor(plan, say=say)
        say("starting a mesh for the demo…")
        mesh = await supervisor.start()
        try:
            if not mesh.admin_password:
                raise CliError(f"{data} already holds a mesh; use an empty --data folder")
            return await run_demo(
                mesh.address("kam"),
                mesh.address("orchestrator"),
                mesh.address("granulator-1"),
                mesh.admin_email,
                mesh.admin_password,
                args.topic,
                args.type,
                args.granularity,
                args,
            )
        finally:
            await supervisor.stop()
