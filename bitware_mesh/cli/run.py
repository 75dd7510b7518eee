"""`bitware run`: submit one request through `bitware_client`, show its progress on stderr, and
print the structure tree it produced (or, with `--json`, one document for scripts)."""

from __future__ import annotations

import argparse
from typing import Any

from bitware.orchestrator.v1 import orchestrator_pb2
from bitware_client import STRUCTURE_TYPES, URGENCIES, RunResult
from bitware_mesh.cli.common import (
    OFFLINE_NOTE,
    CliError,
    add_client_arguments,
    as_json,
    open_client,
    print_json,
    print_tree,
    require,
    usage_line,
    words,
)
from bitware_mesh.cli.output import ProgressView


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
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to watch (600)")
    add_client_arguments(run)
    run.set_defaults(handler=run_command)


def _failure(execution: orchestrator_pb2.Execution) -> str:
    status = words(orchestrator_pb2.ExecutionStatus.Name(execution.status), "EXECUTION_STATUS_")
    error = execution.error
    why = f": {error.reason}: {error.message}" if error.message else ""
    return f"execution {execution.execution_id} {status}{why}"


def _print_result(result: RunResult) -> None:
    structure, execution = result.structure, result.execution
    if structure is None:
        return
    print()
    print_tree(list(structure.elements))
    print()
    quality = execution.stages[-1].quality.score if execution.stages else 0.0
    print(
        f"quality {quality:.1f}/100 · {len(structure.elements)} elements · "
        f"{usage_line(execution.usage)}"
    )
    print(f"job {execution.job_id} · request {result.request.request_id}")
    if execution.usage.provider == "offline":
        print(OFFLINE_NOTE)


async def run_command(args: argparse.Namespace) -> int:
    view = ProgressView(quiet=args.json)
    async with open_client(args) as (client, kind, mesh):
        if kind == "admin" and not args.client:
            raise CliError("with an admin session, say which client with --client CLIENT_ID")
        require(mesh.orchestrator, "--orchestrator")
        require(next(iter(mesh.granulators.values()), ""), "--granulator")
        try:
            result = await client.run(
                args.topic,
                type=args.type,
                audience=args.audience,
                granularity=args.granularity or 0,
                template=args.template,
                urgency=args.urgency,
                client_id=args.client,
                timeout=args.timeout,
                on_event=view.show,
            )
        finally:
            view.close()
    if args.json:
        document: dict[str, Any] = {
            "request": as_json(result.request),
            "execution": as_json(result.execution),
            "structure": as_json(result.structure) if result.structure else None,
        }
        print_json(document)
    else:
        print(f"request {result.request.request_id} → execution {result.execution.execution_id}")
        _print_result(result)
    if not result.succeeded:
        raise CliError(_failure(result.execution))
    return 0
