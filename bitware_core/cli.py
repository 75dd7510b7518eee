"""The `bitware` command: `up` runs the mesh, `demo` runs the main job end to end.

Errors are one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path

import grpc

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
from bitware_core.supervisor import MeshPlan, PortTaken, Supervisor

STRUCTURE_TYPES = ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path")


class CliError(Exception):
    """A failure to report as one line."""


def _plan(args: argparse.Namespace) -> MeshPlan:
    return MeshPlan(
        data_dir=Path(args.data),
        kam_port=args.kam_port,
        orchestrator_port=args.orchestrator_port,
        granulator_port=args.granulator_port,
        gateway_port=args.gateway_port,
        granulators=args.granulators,
        postgres_url=args.postgres or "",
        log_json=args.log_json,
    )


async def _up(args: argparse.Namespace) -> int:
    supervisor = Supervisor(_plan(args))
    try:
        mesh = await supervisor.start()
    except PortTaken as error:
        raise CliError(f"{error}; choose another with --*-port or stop what uses it") from None
    for child in mesh.children:
        print(f"{child.name:<14} {child.address}")
    print(f"dashboard      http://{mesh.address('gateway')}/")
    if mesh.admin_password:
        print(f"admin          {mesh.admin_email} / {mesh.admin_password}  (shown once; keep it)")
    print("ready: Bitware Mesh is up (Ctrl-C stops it)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("stopping…", flush=True)
    await supervisor.stop()
    print("stopped")
    return 0


def _bar(fraction: float, width: int = 24) -> str:
    done = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * done + "-" * (width - done) + f"] {fraction * 100:3.0f}%"


def print_tree(elements: list[common_pb2.Element]) -> None:
    depth: dict[str, int] = {}
    for element in elements:
        level = depth.get(element.parent_id, -1) + 1
        depth[element.element_id] = level
        print(f"{'  ' * level}{element.kind}: {element.title}")


async def run_demo(
    kam: str,
    orchestrator: str,
    granulator: str,
    admin_email: str,
    admin_password: str,
    topic: str,
    structure_type: str,
    granularity: int,
) -> int:
    async with (
        grpc.aio.insecure_channel(kam) as kam_channel,
        grpc.aio.insecure_channel(orchestrator) as orchestrator_channel,
        grpc.aio.insecure_channel(granulator) as granulator_channel,
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
        watch = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator_channel).WatchExecution(
            orchestrator_pb2.WatchExecutionRequest(execution_id=executed.execution_id),
            metadata=as_client,
            timeout=300,
        )
        last: orchestrator_pb2.ExecutionEvent | None = None
        try:
            async for message in watch:
                last = message.event
                kind = orchestrator_pb2.EventType.Name(last.type).removeprefix("EVENT_TYPE_")
                print(
                    f"{_bar(last.progress)} #{last.sequence:<3} {kind.lower():<22} {last.message}"
                )
        finally:
            watch.cancel()
        if last is None or last.type != orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED:
            raise CliError(f"execution did not succeed: {last.message if last else 'no events'}")
        execution = (
            await orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator_channel).GetExecution(
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
        usage = execution.usage
        print()
        print(
            f"quality {execution.stages[-1].quality.score:.1f}/100 · {len(structure.elements)} "
            f"elements · provider {usage.provider} (model {usage.model}) · tokens "
            f"{usage.prompt_tokens} in / {usage.completion_tokens} out · ${usage.cost_usd:.4f}"
        )
        if usage.provider == "offline":
            print(
                "note: generated by the offline provider (no LLM configured); set "
                "BITWARE_OPENAI_API_KEY to use a real model"
            )
    return 0


async def _demo(args: argparse.Namespace) -> int:
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
        )
    with contextlib.ExitStack() as stack:
        data = args.data or stack.enter_context(tempfile.TemporaryDirectory(prefix="bitware-"))
        plan = MeshPlan(
            data_dir=Path(data), kam_port=0, orchestrator_port=0, granulator_port=0, gateway_port=0
        )
        supervisor = Supervisor(plan, say=lambda line: print(line, flush=True))
        print("starting a mesh for the demo…", flush=True)
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
            )
        finally:
            await supervisor.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitware", description="Run and use Bitware Mesh.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start KAM, orchestrator, granulator(s) and gateway")
    up.add_argument("--data", default="data", help="folder for the SQLite files (default ./data)")
    up.add_argument("--postgres", help="PostgreSQL URL for every service instead of SQLite")
    up.add_argument("--granulators", type=int, default=1, help="how many granulator workers")
    up.add_argument("--kam-port", type=int, default=50051)
    up.add_argument("--orchestrator-port", type=int, default=50052)
    up.add_argument("--granulator-port", type=int, default=50053)
    up.add_argument("--gateway-port", type=int, default=8080)
    up.add_argument("--log-json", action="store_true", help="servers log JSON lines")
    demo = commands.add_parser("demo", help="run the main job end to end and show it")
    demo.add_argument("topic", nargs="?", default="AI Development")
    demo.add_argument("--type", choices=STRUCTURE_TYPES, default="course")
    demo.add_argument("--granularity", type=int, choices=range(1, 6), default=3)
    demo.add_argument("--data", help="folder for the demo mesh (default: a temporary one)")
    demo.add_argument("--kam", help="use the running mesh whose KAM is here (host:port)")
    demo.add_argument("--orchestrator", default="127.0.0.1:50052")
    demo.add_argument("--granulator", default="127.0.0.1:50053")
    demo.add_argument("--admin-email", default="admin@bitware.local")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"up": _up, "demo": _demo}[args.command]
    try:
        return asyncio.run(command(args))
    except CliError as error:
        print(f"bitware: {error}", file=sys.stderr)
    except grpc.aio.AioRpcError as error:
        print(f"bitware: {error.code().name}: {error.details()}", file=sys.stderr)
    except (RuntimeError, OSError) as error:
        print(f"bitware: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
