"""`bitware requests list|show|watch|cancel|retry` and `bitware executions list|show|events`:
what a client (or the admin) asks about work already submitted, through `bitware_client`."""

from __future__ import annotations

import argparse
import json

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2
from bitware_client import AsyncClient
from bitware_mesh.cli.common import (
    CliError,
    api_command,
    as_json,
    open_client,
    print_json,
    usage_line,
    words,
)
from bitware_mesh.cli.output import ProgressView, describe, print_table

REQUEST_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
EXECUTION_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _listing(command: argparse.ArgumentParser, statuses: tuple[str, ...]) -> None:
    command.add_argument("--status", choices=statuses, help="only this status")
    command.add_argument("--client", default="", help="only this client's (admin, support)")
    command.add_argument("--limit", type=int, default=50, help="at most this many (50)")


def add_records(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    requests = commands.add_parser(
        "requests", help="list, show, watch, cancel or retry requests", description="Requests."
    )
    group = requests.add_subparsers(dest="action", required=True, metavar="ACTION")
    _listing(api_command(group, "list", "the newest requests", requests_list), REQUEST_STATUSES)
    for name, handler, text in (
        ("show", requests_show, "one request"),
        ("watch", requests_watch, "follow a request's execution to its end"),
        ("cancel", requests_cancel, "cancel a request and its execution"),
        ("retry", requests_retry, "re-run a failed request from its failed stage"),
    ):
        command = api_command(group, name, text, handler)
        command.add_argument("request_id", metavar="REQUEST_ID")
        if name == "watch":
            command.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")

    executions = commands.add_parser(
        "executions",
        help="list or show executions, or print their events",
        description=("Executions on the orchestrator."),
    )
    group = executions.add_subparsers(dest="action", required=True, metavar="ACTION")
    _listing(
        api_command(group, "list", "the newest executions", executions_list), EXECUTION_STATUSES
    )
    show = api_command(group, "show", "one execution with its stages", executions_show)
    show.add_argument("execution_id", metavar="EXECUTION_ID")
    events = api_command(
        group, "events", "an execution's event log, to its end (JSON lines with --json)", events_cmd
    )
    events.add_argument("execution_id", metavar="EXECUTION_ID")
    events.add_argument("--after", type=int, default=0, help="only events after this sequence")
    events.add_argument("--timeout", type=float, default=600.0, help="seconds (600)")


def _request_status(request: requests_pb2.ClientRequest) -> str:
    return words(requests_pb2.RequestStatus.Name(request.status), "REQUEST_STATUS_")


def _execution_status(execution: orchestrator_pb2.Execution) -> str:
    return words(orchestrator_pb2.ExecutionStatus.Name(execution.status), "EXECUTION_STATUS_")


def _time(request: requests_pb2.ClientRequest | orchestrator_pb2.Execution) -> str:
    return request.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- requests


async def requests_list(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        found = await client.requests.list(
            status=args.status, client_id=args.client, limit=args.limit
        )
    if args.json:
        print_json({"requests": [as_json(r) for r in found]})
        return 0
    if not found:
        print("no requests")
        return 0
    print_table(
        ("REQUEST", "STATUS", "TYPE", "TOPIC", "COST", "CREATED", "EXECUTION"),
        [
            (
                r.request_id,
                _request_status(r),
                words(common_pb2.StructureType.Name(r.spec.structure_type), "STRUCTURE_TYPE_"),
                r.spec.topic,
                f"${r.cost_usd:.4f}",
                _time(r),
                r.execution_id or "—",
            )
            for r in found
        ],
    )
    return 0


async def requests_show(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        request = await client.requests.get(args.request_id)
    if args.json:
        print_json(as_json(request))
        return 0
    rows = [
        ("request", request.request_id),
        ("client", request.client_id),
        ("status", _request_status(request)),
        ("topic", request.spec.topic),
        ("template", f"{request.master_template or '(default)'} v{request.template_version}"),
        ("execution", request.execution_id or "—"),
        ("job", request.job_id or "—"),
        ("cost", f"${request.cost_usd:.4f} (reserved ${request.reserved_usd:.4f})"),
        ("retries", str(request.retries)),
        ("created", _time(request)),
    ]
    if request.error_message:
        rows.append(("error", request.error_message))
    print_table(("FIELD", "VALUE"), rows)
    return 0


async def _follow(client: AsyncClient, execution_id: str, args: argparse.Namespace) -> int:
    """Shows the execution's progress on stderr to its end; 0 if it succeeded."""
    view = ProgressView(quiet=args.json)
    try:
        async for event in client.watch(execution_id, timeout=args.timeout):
            view.show(event)
    finally:
        view.close()
    execution = await client.executions.get(execution_id)
    if args.json:
        print_json(as_json(execution))
    else:
        print(f"execution {execution_id} {_execution_status(execution)}")
    if execution.status != orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED:
        why = (
            f": {execution.error.reason}: {execution.error.message}"
            if execution.error.message
            else ""
        )
        raise CliError(f"execution {execution_id} {_execution_status(execution)}{why}")
    return 0


async def requests_watch(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        request = await client.requests.get(args.request_id)
        if not request.execution_id:
            status = _request_status(request)
            raise CliError(f"request {request.request_id} was never executed (it is {status})")
        return await _follow(client, request.execution_id, args)


async def requests_cancel(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        request = await client.requests.cancel(args.request_id)
    if args.json:
        print_json(as_json(request))
    else:
        print(f"request {request.request_id} {_request_status(request)}")
    return 0


async def requests_retry(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        execution_id = await client.requests.retry(args.request_id)
        request = await client.requests.get(args.request_id)
    if args.json:
        print_json({"request": as_json(request), "execution_id": execution_id})
    else:
        status = _request_status(request)
        print(f"request {request.request_id} {status} again: execution {execution_id}")
    return 0


# ---------------------------------------------------------------- executions


async def executions_list(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        found = await client.executions.list(
            status=args.status, client_id=args.client, limit=args.limit
        )
    if args.json:
        print_json({"executions": [as_json(e) for e in found]})
        return 0
    if not found:
        print("no executions")
        return 0
    print_table(
        ("EXECUTION", "STATUS", "PROGRESS", "TEMPLATE", "REQUEST", "COST", "CREATED"),
        [
            (
                e.execution_id,
                _execution_status(e),
                f"{e.progress:.0%}",
                f"{e.template_name} v{e.template_version}",
                e.request_id,
                f"${e.usage.cost_usd:.4f}",
                _time(e),
            )
            for e in found
        ],
    )
    return 0


async def executions_show(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        execution = await client.executions.get(args.execution_id)
    if args.json:
        print_json(as_json(execution))
        return 0
    print(
        f"execution {execution.execution_id} {_execution_status(execution)} "
        f"{execution.progress:.0%} · request {execution.request_id} · "
        f"{execution.template_name} v{execution.template_version}"
    )
    if execution.error.message:
        print(f"error {execution.error.reason}: {execution.error.message}")
    print(usage_line(execution.usage))
    print_table(
        ("STAGE", "NAME", "STATUS", "ATTEMPTS", "WORKER", "QUALITY"),
        [
            (
                stage.order,
                stage.name,
                words(orchestrator_pb2.StageStatus.Name(stage.status), "STAGE_STATUS_"),
                len(stage.attempts),
                stage.attempts[-1].worker_id if stage.attempts else "—",
                f"{stage.quality.score:.1f}" if stage.quality.score else "—",
            )
            for stage in execution.stages
        ],
    )
    return 0


async def events_cmd(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        async for event in client.watch(
            args.execution_id, after_sequence=args.after, timeout=args.timeout
        ):
            if args.json:  # one JSON object a line, as they come
                print(json.dumps(as_json(event.raw), ensure_ascii=False), flush=True)
            else:
                stamp = event.raw.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
                print(
                    f"{event.sequence:>4}  {stamp}  {event.progress:4.0%}  {describe(event)}",
                    flush=True,
                )
    return 0
