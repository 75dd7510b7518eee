"""What every `bitware` command shares: finding a running mesh, signing in, and printing.

A mesh is found from the `mesh.json` that `bitware up` writes into its data folder, or from
addresses given on the command line (which win). The credential is a client's API key
(`--api-key` or BITWARE_API_KEY) or an admin session opened with BITWARE_ADMIN_EMAIL and
BITWARE_ADMIN_PASSWORD (and closed again when the command ends). `--tls-ca` (and, for mutual
TLS, `--tls-cert`/`--tls-key`) switch every channel to TLS. The commands that read and change
the mesh's objects go through `bitware_client` (`open_client`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_client import TLS, AsyncClient, BitwareError, Unauthenticated

#: Deadline of one unary call from the CLI, in seconds.
CALL_TIMEOUT = 10.0

Metadata = tuple[tuple[str, str], ...]


class CliError(Exception):
    """A failure to report as one line on stderr, with a non-zero exit."""


@dataclass
class MeshAddresses:
    """Where a running mesh listens."""

    kam: str = ""
    orchestrator: str = ""
    gateway: str = ""
    granulators: dict[str, str] = field(default_factory=dict)
    admin_email: str = "admin@bitware.local"
    source: str = "the command line"
    supervisor_pid: int = 0
    supervisor_running: bool = False


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the mesh is (default: DATA/mesh.json)")
    where.add_argument(
        "--data", default="data", help="the data folder of `bitware up` (default ./data)"
    )
    where.add_argument("--kam", help="KAM's host:port")
    where.add_argument("--orchestrator", help="the orchestrator's host:port")
    where.add_argument("--granulator", help="a granulator's host:port")
    where.add_argument("--gateway", help="the gateway's host:port")
    add_tls_arguments(parser)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("TLS (default: plaintext)")
    tls.add_argument("--tls-ca", metavar="PEM", help="verify the servers with this CA bundle")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate, for mutual TLS")
    tls.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """What every command that reads or changes the mesh's objects takes."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--api-key", help="a client's API key (default: $BITWARE_API_KEY)")
    add_mesh_arguments(parser)


def api_command(
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    text: str,
    handler: object,
) -> argparse.ArgumentParser:
    """A subcommand (`requests list`) that takes what every API command takes."""
    command = group.add_parser(name, help=text, description=text)
    add_client_arguments(command)
    command.set_defaults(handler=handler)
    return command


def tls_of(args: argparse.Namespace) -> TLS | None:
    """The TLS material of --tls-ca/--tls-cert/--tls-key, or None for plaintext."""
    ca, cert, key = (getattr(args, name, None) for name in ("tls_ca", "tls_cert", "tls_key"))
    if not (ca or cert or key):
        return None
    if bool(cert) != bool(key):
        raise CliError("--tls-cert and --tls-key go together")
    try:
        return TLS(
            ca=Path(ca).read_bytes() if ca else None,
            cert=Path(cert).read_bytes() if cert else None,
            key=Path(key).read_bytes() if key else None,
        )
    except OSError as error:
        raise CliError(f"cannot read {error.filename}: {error.strerror}") from None


def grpc_channel(args: argparse.Namespace, address: str) -> grpc.aio.Channel:
    """A channel to `address`, over TLS when the command was given --tls-*."""
    tls = tls_of(args)
    if tls is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, tls.credentials())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_mesh_file(data: Path) -> dict[str, Any] | None:
    path = data / "mesh.json"
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CliError(f"cannot read {path}: {error}") from None
    if not isinstance(content, dict) or not isinstance(content.get("addresses"), dict):
        raise CliError(f"{path} is not a mesh file written by `bitware up`")
    return content


def running_supervisor(data: Path) -> int:
    """The pid of a live `bitware up` that wrote DATA/mesh.json, or 0."""
    content = read_mesh_file(data)
    if content is None:
        return 0
    pid = int(content.get("pid", 0))
    return pid if pid and pid != os.getpid() and _alive(pid) else 0


def find_mesh(args: argparse.Namespace) -> MeshAddresses:
    """The mesh's addresses: explicit flags, else DATA/mesh.json."""
    mesh = MeshAddresses()
    if not args.kam:
        data = Path(args.data)
        content = read_mesh_file(data)
        if content is None:
            raise CliError(
                f"no mesh found: {data / 'mesh.json'} does not exist; start one with "
                f"`bitware up --data {data}` or give --kam and --orchestrator"
            )
        addresses: dict[str, str] = content["addresses"]
        mesh = MeshAddresses(
            kam=addresses.get("kam", ""),
            orchestrator=addresses.get("orchestrator", ""),
            gateway=addresses.get("gateway", ""),
            granulators={k: v for k, v in addresses.items() if k.startswith("granulator")},
            admin_email=content.get("admin_email", mesh.admin_email),
            source=str(data / "mesh.json"),
            supervisor_pid=int(content.get("pid", 0)),
            supervisor_running=bool(running_supervisor(data)),
        )
    mesh.kam = args.kam or mesh.kam
    mesh.orchestrator = args.orchestrator or mesh.orchestrator
    mesh.gateway = args.gateway or mesh.gateway
    if args.granulator:
        mesh.granulators = {"granulator": args.granulator}
    return mesh


def require(address: str, flag: str) -> str:
    if not address:
        raise CliError(f"this command needs {flag} (or a mesh.json that names it)")
    return address


# ---------------------------------------------------------------- credentials


def api_key_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "api_key", None) or os.environ.get("BITWARE_API_KEY", "")).strip()


def admin_login(mesh: MeshAddresses) -> tuple[str, str]:
    """(email, password) from the environment, or ("", "")."""
    email = os.environ.get("BITWARE_ADMIN_EMAIL", "") or mesh.admin_email
    return email, os.environ.get("BITWARE_ADMIN_PASSWORD", "")


NO_CREDENTIAL = (
    "no credential: set BITWARE_API_KEY (a client's API key) or BITWARE_ADMIN_PASSWORD "
    "(with BITWARE_ADMIN_EMAIL if the admin is not {email})"
)


@contextlib.asynccontextmanager
async def signed_in(
    kam: grpc.aio.Channel, args: argparse.Namespace, mesh: MeshAddresses, prefer_admin: bool
) -> AsyncIterator[tuple[Metadata, str]]:
    """The caller's credential as metadata, and what kind it is ("api key" or "admin").

    With both available, `prefer_admin` picks the admin session (staff-only reads)."""
    key = api_key_of(args)
    email, password = admin_login(mesh)
    if key and not (prefer_admin and password):
        yield (("x-api-key", key),), "api key"
        return
    if not password:
        raise CliError(NO_CREDENTIAL.format(email=email))
    auth = auth_pb2_grpc.AuthServiceStub(kam)
    try:
        login = await auth.Login(
            auth_pb2.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise CliError(f"sign-in as {email} refused: {error.details()}") from None
        raise
    session: Metadata = (("x-bitware-session-token", login.session_token),)
    try:
        yield session, "admin"
    finally:
        # A CLI run is one short session; do not leave it lying around.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await auth.Logout(auth_pb2.LogoutRequest(), metadata=session, timeout=CALL_TIMEOUT)


@contextlib.asynccontextmanager
async def connected(
    args: argparse.Namespace, mesh: MeshAddresses, prefer_admin: bool
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel, Metadata, str]]:
    """Channels to KAM and the orchestrator, and the caller signed in (see `signed_in`): (kam,
    orchestrator, metadata, credential kind)."""
    require(mesh.kam, "--kam")
    require(mesh.orchestrator, "--orchestrator")
    async with (
        grpc_channel(args, mesh.kam) as kam,
        grpc_channel(args, mesh.orchestrator) as orchestrator,
        signed_in(kam, args, mesh, prefer_admin) as (metadata, kind),
    ):
        yield kam, orchestrator, metadata, kind


@contextlib.asynccontextmanager
async def open_client(
    args: argparse.Namespace, prefer_admin: bool = False
) -> AsyncIterator[tuple[AsyncClient, str, MeshAddresses]]:
    """A `bitware_client.AsyncClient` on the mesh, signed in as `signed_in` would: (client,
    credential kind, addresses)."""
    mesh = find_mesh(args)
    require(mesh.kam, "--kam")
    key = api_key_of(args)
    email, password = admin_login(mesh)
    admin = bool(password) and (prefer_admin or not key)
    if not key and not password:
        raise CliError(NO_CREDENTIAL.format(email=email))
    client = AsyncClient(
        mesh.kam,
        orchestrator=mesh.orchestrator or None,
        granulator=mesh.granulators or None,
        api_key=None if admin else key,
        tls=tls_of(args) or False,
        timeout=CALL_TIMEOUT,
    )
    try:
        if admin:
            try:
                await client.login(email, password)
            except Unauthenticated as error:
                raise CliError(f"sign-in as {email} refused: {error.message}") from None
        try:
            yield client, "admin" if admin else "api key", mesh
        finally:
            if admin:  # a CLI run is one short session; do not leave it lying around
                with contextlib.suppress(BitwareError):
                    await client.logout()
    finally:
        await client.close()


# ---------------------------------------------------------------- printing


def as_json(message: Message) -> dict[str, Any]:
    """Protobuf → JSON with the proto's field names, as the gateway answers."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def words(enum_name: str, prefix: str) -> str:
    """`EXECUTION_STATUS_RUNNING` → `running`."""
    return enum_name.removeprefix(prefix).lower().replace("_", " ")


def bar(fraction: float, width: int = 24) -> str:
    fraction = max(0.0, min(1.0, fraction))
    done = round(fraction * width)
    return "[" + "#" * done + "-" * (width - done) + f"] {fraction * 100:3.0f}%"


def print_tree(elements: list[common_pb2.Element], out: TextIO = sys.stdout) -> None:
    """The element tree (pre-order, parents first), indented by depth."""
    depth: dict[str, int] = {}
    for element in elements:
        level = depth.get(element.parent_id, -1) + 1
        depth[element.element_id] = level
        print(f"{'  ' * level}{element.kind}: {element.title}", file=out)


def usage_line(usage: common_pb2.Usage) -> str:
    return (
        f"provider {usage.provider} (model {usage.model}) · tokens {usage.prompt_tokens} in / "
        f"{usage.completion_tokens} out · ${usage.cost_usd:.4f}"
    )


OFFLINE_NOTE = (
    "note: generated by the offline provider (no LLM configured); set BITWARE_OPENAI_API_KEY "
    "to use a real model"
)
