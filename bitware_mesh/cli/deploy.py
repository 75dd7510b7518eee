"""`bitware migrate` and `bitware health`: what a deployment runs beside `bitware serve` (a
migration job before a rollout; a container's health check).

`migrate` brings each service's schema to its newest revision in the database that
BITWARE_DATABASE_URL names (every service may share one PostgreSQL database: each keeps its own
tables and version table), under the same per-service lock that a starting server takes, so it
is safe while servers start. The servers also migrate on start; a separate job makes a failed
migration fail the rollout rather than every replica's start.

`health` asks one server on this host whether it serves: grpc.health.v1 by default, the
gateway's `/healthz` with `--http`. Exit code 0 when it serves, 1 otherwise (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from bitware_core.config import Settings
from bitware_core.db import Database
from bitware_mesh.cli.checks import gateway_health, grpc_health
from bitware_mesh.cli.common import CliError, add_tls_arguments, print_json

#: Each service with a database, and the declarative base of its models.
SCHEMAS = {
    "kam": "KamBase",
    "orchestrator": "OrchestratorBase",
    "granulator": "GranulatorBase",
}


def add_deploy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "bring each service's database schema to its newest revision (BITWARE_DATABASE_URL)"
    migrate = commands.add_parser("migrate", help=text, description=text)
    migrate.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"which of {', '.join(SCHEMAS)} (default: all three)",
    )
    migrate.add_argument("--json", action="store_true", help="print JSON for scripts")
    migrate.set_defaults(handler=migrate_command)

    text = "is the server on this host serving? (exit code 0 if so; for health checks)"
    health = commands.add_parser("health", help=text, description=text)
    health.add_argument(
        "address",
        nargs="?",
        help="host:port (default: 127.0.0.1:$BITWARE_PORT, the server of this container)",
    )
    health.add_argument(
        "--http", action="store_true", help="the gateway: GET /healthz instead of grpc.health"
    )
    health.add_argument("--json", action="store_true", help="print JSON for scripts")
    add_tls_arguments(health)
    health.set_defaults(handler=health_command)


def migrate_service(settings: Settings, service: str) -> None:
    models = importlib.import_module(f"{service}_server.models")
    assert models.__file__ is not None
    metadata = getattr(models, SCHEMAS[service]).metadata
    db = Database(settings.storage.database_url_for(service))
    try:
        with db.exclusive(f"{service} start-up"):
            db.migrate(service, str(Path(models.__file__).parent / "migrations"), metadata)
    finally:
        db.close()


async def migrate_command(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.services) - set(SCHEMAS))
    if unknown:
        raise CliError(f"no service {', '.join(unknown)}: choose from {', '.join(SCHEMAS)}")
    settings = Settings.from_env()
    done = []
    for service in args.services or list(SCHEMAS):
        await asyncio.to_thread(migrate_service, settings, service)
        done.append(service)
        if not args.json:
            print(f"{service}: schema up to date")
    if args.json:
        print_json({"up_to_date": done})
    return 0


async def health_command(args: argparse.Namespace) -> int:
    address = args.address
    if not address:
        port = os.environ.get("BITWARE_PORT", "")
        if not port or port == "0":
            raise CliError("give host:port, or set BITWARE_PORT to the server's fixed port")
        address = f"127.0.0.1:{port}"
    health = await (
        gateway_health(args, address) if args.http else grpc_health(args, "server", address)
    )
    if args.json:
        print_json(health.__dict__)
    if not health.ok:
        print(f"bitware: {address} {health.state}: {health.detail}", file=sys.stderr)
        return 1
    return 0
