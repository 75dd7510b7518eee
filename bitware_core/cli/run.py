"""`bitware run`: submit one request, watch it with a progress bar fed by WatchExecution, and
print the structure tree it produced (or, with `--json`, one document for scripts)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.cli.common import (
    CALL_TIMEOUT,
    OFFLINE_NOTE,
    CliError,
    MeshAddresses,
    Metadata,
    add_mesh_arguments,
    as_json,
    bar,
    connected,
    find_mesh,
    print_json,
    print_tree,
    require,
    usage_line,
    words,
)
from bitware_core.cli.mesh import STRUCTURE_TYPES

URGENCIES = ("low", "normal", "high", "critical")


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="submit one request, watch its progress, print the structure",
        description="Submit one request as a client, watch it to the end, print the structure. "
        "The credential is --api-key or BITWARE_API_KEY; an admin session "
        "(BITWARE_ADMIN_PASSWORD) needs --client.",
    )
    run.add_argument("--topic", required=True, help="what it is about, e.g. 'AI Development'")
    run.add_argument("--type", choices=STRUCTURE_TYPES, default="course", help="structure type")
    run.add_argument("--template", default="", help="master template name (default: the type's)")
    run.add_argument("--audience", default="", help="who it is for, e.g. beginners")
    run.add_argument("--granularity", type=int, choices=range(1, 6), help="1 coarse … 5 detailed")
    run.add_argument("--urgency", choices=URGENCIES, help="maps to the queue priority")
    run.add_argument("--client", default="", help="the client id (only with an admin session)")
    run.add_argument("--api-key", help="a client's API key (default: $BITWARE_API_KEY)")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to watch (600)")
    run.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    add_mesh_arguments(run)
    run.set_defaults(handler=run_command)


class Progress:
    """One line redrawn in place on a terminal; a line per event when piped."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = sys.stdout.isatty()
        self.width = 0

    def show(self, event: orchestrator_pb2.ExecutionEvent) -> None:
        if self.quiet:
            return
        kind = words(orchestrator_pb2.EventType.Name(event.type), "EVENT_TYPE_")
        line = f"{bar(event.progress)}  {kind}: {event.message}"
        if event.error.message:
            line += f" ({event.error.reason}: {event.error.message})"
        if not self.live:
            print(line, flush=True)
            return
        padding = " " * max(0, self.width - len(line))
        self.width = len(line)
        print(f"\r{line}{padding}", end="", flush=True)

    def done(self) -> None:
        if self.live and not self.quiet and self.width:
            print(flush=True)


def _spec(args: argparse.Namespace) -> requests_pb2.CreateRequestRequest:
    return requests_pb2.CreateRequestRequest(
        spec=common_pb2.ContentSpec(
            topic=args.topic,
            structure_type=common_pb2.StructureType.Value(f"STRUCTURE_TYPE_{args.type.upper()}"),
            audience=args.audience,
            granularity=args.granularity or 0,
        ),
        master_template=args.template,
        urgency=requests_pb2.Urgency.Value(f"URGENCY_{args.urgency.upper()}")
        if args.urgency
        else requests_pb2.URGENCY_UNSPECIFIED,
        client_id=args.client,
    )


async def _watch(
    orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub,
    execution_id: str,
    metadata: Metadata,
    progress: Progress,
    seconds: float,
) -> None:
    watch = orchestrator.WatchExecution(
        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
        metadata=metadata,
        timeout=seconds,
    )
    try:
        async for message in watch:
            progress.show(message.event)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CliError(
                f"execution {execution_id} did not finish within {seconds:.0f}s; it goes on "
                f"(watch it with a longer --timeout or in the dashboard)"
            ) from None
        raise
    finally:
        watch.cancel()
        progress.done()


def _worker_of(execution: orchestrator_pb2.Execution) -> str:
    """The worker whose attempt produced the deliverable job (it holds the stored tree)."""
    for stage in reversed(execution.stages):
        if stage.job_id == execution.job_id:
            for attempt in reversed(stage.attempts):
                if attempt.status == orchestrator_pb2.ATTEMPT_STATUS_SUCCEEDED:
                    return attempt.worker_id
    return ""


async def _structure(
    mesh: MeshAddresses, execution: orchestrator_pb2.Execution, metadata: Metadata
) -> granulator_pb2.GetStructureResponse:
    address = mesh.granulator_for(_worker_of(execution))
    require(address, "--granulator")
    async with grpc.aio.insecure_channel(address) as channel:
        return await granulator_pb2_grpc.GranulatorServiceStub(channel).GetStructure(
            granulator_pb2.GetStructureRequest(job_id=execution.job_id),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )


def _failure(execution: orchestrator_pb2.Execution) -> str:
    status = words(orchestrator_pb2.ExecutionStatus.Name(execution.status), "EXECUTION_STATUS_")
    error = execution.error
    why = f": {error.reason}: {error.message}" if error.message else ""
    return f"execution {execution.execution_id} {status}{why}"


async def run_command(args: argparse.Namespace) -> int:
    mesh = find_mesh(args)
    progress = Progress(quiet=args.json)
    async with connected(args, mesh, prefer_admin=False) as (
        kam,
        orchestrator_channel,
        metadata,
        kind,
    ):
        if kind == "admin" and not args.client:
            raise CliError("with an admin session, say which client with --client CLIENT_ID")
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator_channel)
        created = (
            await requests.CreateRequest(_spec(args), metadata=metadata, timeout=CALL_TIMEOUT)
        ).request
        executed = await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=created.request_id),
            metadata=metadata,
            timeout=CALL_TIMEOUT,
        )
        if not args.json:
            print(f"request {created.request_id} → execution {executed.execution_id}", flush=True)
        await _watch(orchestrator, executed.execution_id, metadata, progress, args.timeout)
        execution = (
            await orchestrator.GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=executed.execution_id),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        ).execution
        request = (
            await requests.GetRequest(
                requests_pb2.GetRequestRequest(request_id=created.request_id),
                metadata=metadata,
                timeout=CALL_TIMEOUT,
            )
        ).request
        succeeded = execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
        structure = await _structure(mesh, execution, metadata) if succeeded else None

    if args.json:
        document: dict[str, Any] = {
            "request": as_json(request),
            "execution": as_json(execution),
            "structure": as_json(structure) if structure else None,
        }
        print_json(document)
    elif structure is not None:
        print()
        print_tree(list(structure.elements))
        print()
        quality = execution.stages[-1].quality.score if execution.stages else 0.0
        print(
            f"quality {quality:.1f}/100 · {len(structure.elements)} elements · "
            f"{usage_line(execution.usage)}"
        )
        print(f"job {execution.job_id} · request {request.request_id}")
        if execution.usage.provider == "offline":
            print(OFFLINE_NOTE)
    if not succeeded:
        raise CliError(_failure(execution))
    return 0
