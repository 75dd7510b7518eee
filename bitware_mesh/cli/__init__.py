"""The `bitware` command.

`up` runs the mesh and `demo` the main job (`cli.mesh`); `serve` runs one server, the unit of
deployment (`cli.serve`); `credentials` mints, rotates and revokes worker and service credentials
(`cli.credentials`); `run` submits and watches one request (`cli.run`); `requests` and
`executions` read and act on work already submitted (`cli.records`); `keys` and `templates`
manage API keys and master templates (`cli.admin`); `status`, `workers` and `queue` are what a
person checks first when something is stuck (`cli.checks`); `version` and `completion` are
`cli.meta`. The commands that use the mesh's API go through `bitware_client`. Errors are one
clear line on stderr and a non-zero exit, never a traceback (set BITWARE_DEBUG=1 to see one for
an unexpected failure).

`migrate` and `health` are what a deployment runs beside each server (`cli.deploy`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, cast

import grpc

from bitware_client import BitwareError
from bitware_client.errors import from_rpc_error
from bitware_core.config import SettingsError
from bitware_mesh.cli.admin import add_admin
from bitware_mesh.cli.checks import add_checks
from bitware_mesh.cli.common import CliError
from bitware_mesh.cli.credentials import add_credentials
from bitware_mesh.cli.deploy import add_deploy
from bitware_mesh.cli.mesh import add_demo, add_up
from bitware_mesh.cli.meta import add_meta, version_text
from bitware_mesh.cli.records import add_records
from bitware_mesh.cli.run import add_run
from bitware_mesh.cli.serve import add_serve

#: A command: a coroutine run on a fresh event loop, or (`serve`, which runs its own) an exit code.
Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int]

#: What to tell a person about a status code, beyond the server's own words.
_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "is the mesh running? (`bitware status` shows what is up)",
    grpc.StatusCode.UNAUTHENTICATED: "check --api-key / BITWARE_API_KEY or the admin password",
    grpc.StatusCode.PERMISSION_DENIED: "this needs an admin session (BITWARE_ADMIN_PASSWORD)",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the mesh did not answer in time",
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="bitware", description="Run and use Bitware Mesh.")
    root.add_argument("--version", action="version", version=version_text())
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up(commands)
    add_demo(commands)
    add_serve(commands)
    add_credentials(commands)
    add_run(commands)
    add_records(commands)
    add_admin(commands)
    add_checks(commands)
    add_deploy(commands)
    add_meta(commands, root)
    return root


def _error_line(error: BitwareError) -> str:
    """One line: the status, the server's words, its reason and what to try."""
    details = error.message.splitlines()[0] if error.message else ""
    line = f"{error.code.name}: {details}"
    if error.reason and error.reason != error.code.name:
        line += f" [{error.reason}]"
    if error.retry_after is not None:
        line += f" (try again in {error.retry_after:.0f}s)"
    hint = _HINTS.get(error.code)
    return line + (f" — {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = cast(Handler, args.handler)
    try:
        outcome = handler(args)
        return asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome
    except CliError as error:
        print(f"bitware: {error}", file=sys.stderr)
    except SettingsError as error:
        print(f"bitware: {error}", file=sys.stderr)
        return 2
    except BitwareError as error:
        print(f"bitware: {_error_line(error)}", file=sys.stderr)
    except grpc.aio.AioRpcError as error:
        print(f"bitware: {_error_line(from_rpc_error(error))}", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (`bitware run … | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("bitware: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as error:
        print(f"bitware: {error}", file=sys.stderr)
    except Exception as error:  # a bug: still one line, unless asked for the traceback
        if os.environ.get("BITWARE_DEBUG"):
            traceback.print_exc()
        print(f"bitware: unexpected {type(error).__name__}: {error}", file=sys.stderr)
    return 1


__all__ = ["CliError", "main", "parser"]
