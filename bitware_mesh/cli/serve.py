"""`bitware serve kam|orchestrator|granulator|gateway`: one server in this process, the unit of
deployment (a container, a systemd unit, a process on another host).

It is configured only by `BITWARE_*` environment variables, exactly as `bitware up` configures
its children, logs to stderr, serves grpc.health (the gateway: /healthz) and, with
BITWARE_METRICS_ADDRESS, Prometheus metrics; prints its ready line
`BITWARE_READY <server> <host:port> [metrics=<host:port>]` once it listens, and stops gracefully
on SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib

#: Each server's module; its `main()` is the whole life of the server process.
SERVER_MODULES = {
    "kam": "kam_server.server",
    "orchestrator": "orchestrator_server.server",
    "granulator": "granulator_server.server",
    "gateway": "gateway.app",
}


def add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "run one server, configured by BITWARE_* environment variables"
    serve = commands.add_parser("serve", help=text, description=__doc__.split("\n\n")[1])
    serve.add_argument("server", choices=SERVER_MODULES, help="which server to run")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    # Not a coroutine: each server's main() runs its own event loop until it is stopped, and
    # exits with code 2 (one line on stderr) on a bad setting or an address it cannot bind.
    importlib.import_module(SERVER_MODULES[args.server]).main()
    return 0
