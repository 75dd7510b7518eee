"""`bitware credentials`: mint, rotate, revoke and list the credentials of workers and services,
through KAM's WorkerCredentialService, as the admin (BITWARE_ADMIN_PASSWORD).

A new or rotated token is printed once, as the two environment lines the worker runs with
(`BITWARE_WORKER_ID`, `BITWARE_WORKER_TOKEN`), so `bitware credentials create-worker gpu-1 >
gpu-1.env` writes the file a granulator on another host needs; KAM keeps only its hash.
"""

from __future__ import annotations

import argparse
import sys

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, accounts_pb2_grpc
from bitware_core.auth import hash_secret, new_secret
from bitware_mesh.cli.common import (
    CALL_TIMEOUT,
    CliError,
    add_mesh_arguments,
    admin_login,
    as_json,
    find_mesh,
    grpc_channel,
    print_json,
    require,
    signed_in,
)

_KINDS = {
    "create-worker": common_pb2.PRINCIPAL_KIND_WORKER,
    "create-service": common_pb2.PRINCIPAL_KIND_SERVICE,
}


def add_credentials(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "mint, rotate, revoke and list worker and service credentials (admin)"
    group = commands.add_parser("credentials", help=text, description=__doc__)
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    bootstrap = actions.add_parser(
        "bootstrap",
        help="a token for KAM to install at start (offline); prints it once with its hash",
        description="A new token for a credential KAM installs when it starts (its own, which "
        "nothing can mint before KAM runs): prints BITWARE_WORKER_ID and BITWARE_WORKER_TOKEN "
        "for the holder and the BITWARE_BOOTSTRAP_CREDENTIALS entry (the hash) for KAM. Needs "
        "no running mesh.",
    )
    bootstrap.add_argument("worker_id", metavar="NAME", help="the worker or service id")
    bootstrap.add_argument("--kind", choices=("service", "worker"), default="service")
    bootstrap.set_defaults(handler=bootstrap_command)
    for action, help_text in (
        ("create-worker", "a credential for a worker (a granulator); prints its token once"),
        ("create-service", "a credential for a service (orchestrator, gateway); token once"),
        ("rotate", "a new token for a credential (the old one stops working); prints it once"),
        ("revoke", "revoke a credential; its holder is refused from then on"),
        ("list", "every credential (never a token)"),
    ):
        command = actions.add_parser(action, help=help_text, description=help_text)
        if action != "list":
            command.add_argument("worker_id", metavar="NAME", help="the worker or service id")
        command.add_argument("--json", action="store_true", help="print JSON for scripts")
        add_mesh_arguments(command)
        command.set_defaults(handler=credentials_command)


def _show(info: accounts_pb2.WorkerCredentialInfo) -> str:
    kind = common_pb2.PrincipalKind.Name(info.kind).removeprefix("PRINCIPAL_KIND_").lower()
    created = info.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M") + " UTC"
    return f"{info.worker_id:<24} {kind:<8} {'revoked' if info.revoked else 'active':<8} {created}"


async def bootstrap_command(args: argparse.Namespace) -> int:
    # KAM's own rule, checked before a token is made (imported here: it brings KAM's models).
    from kam_server.credentials import WORKER_ID, WORKER_ID_RULE, WORKER_TOKEN_PREFIX

    if not WORKER_ID.match(args.worker_id):
        raise CliError(f"a worker id {WORKER_ID_RULE}, not {args.worker_id!r}")
    token = new_secret(WORKER_TOKEN_PREFIX)
    print(f"BITWARE_WORKER_ID={args.worker_id}")
    print(f"BITWARE_WORKER_TOKEN={token}")
    print(f"BITWARE_BOOTSTRAP_CREDENTIALS={args.worker_id}:{args.kind}:{hash_secret(token)}")
    print(
        "the first two lines are for the holder, the last for KAM (join several with commas); "
        "the token is shown only this once",
        file=sys.stderr,
    )
    return 0


async def credentials_command(args: argparse.Namespace) -> int:
    mesh = find_mesh(args)
    kam_address = require(mesh.kam, "--kam")
    email, password = admin_login(mesh)
    if not password:
        raise CliError(
            f"credentials are managed by an admin: set BITWARE_ADMIN_PASSWORD (and "
            f"BITWARE_ADMIN_EMAIL if the admin is not {email})"
        )
    args.api_key = None  # an admin session only, even if BITWARE_API_KEY is set
    async with (
        grpc_channel(args, kam_address) as kam,
        signed_in(kam, args, mesh, prefer_admin=True) as (admin, _kind),
    ):
        stub = accounts_pb2_grpc.WorkerCredentialServiceStub(kam)
        if args.action == "list":
            listed: list[accounts_pb2.WorkerCredentialInfo] = []
            token = ""
            while True:
                page = await stub.ListWorkerCredentials(
                    accounts_pb2.ListWorkerCredentialsRequest(page_size=200, page_token=token),
                    metadata=admin,
                    timeout=CALL_TIMEOUT,
                )
                listed += page.credentials
                token = page.next_page_token
                if not token:
                    break
            if args.json:
                print_json({"credentials": [as_json(info) for info in listed]})
            else:
                for info in listed:
                    print(_show(info))
            return 0
        if args.action == "revoke":
            revoked = await stub.RevokeWorkerCredential(
                accounts_pb2.RevokeWorkerCredentialRequest(worker_id=args.worker_id),
                metadata=admin,
                timeout=CALL_TIMEOUT,
            )
            if args.json:
                print_json(as_json(revoked))
            else:
                print(
                    f"revoked {args.worker_id}: its token is refused from now on (other "
                    "servers may trust it for their auth cache time, at most 30 s)"
                )
            return 0
        minted: accounts_pb2.CreateWorkerCredentialResponse | (
            accounts_pb2.RotateWorkerCredentialResponse
        )
        if args.action == "rotate":
            minted = await stub.RotateWorkerCredential(
                accounts_pb2.RotateWorkerCredentialRequest(worker_id=args.worker_id),
                metadata=admin,
                timeout=CALL_TIMEOUT,
            )
        else:
            minted = await stub.CreateWorkerCredential(
                accounts_pb2.CreateWorkerCredentialRequest(
                    worker_id=args.worker_id, kind=_KINDS[args.action]
                ),
                metadata=admin,
                timeout=CALL_TIMEOUT,
            )
    if args.json:
        print_json(as_json(minted))
        return 0
    # The two lines a worker runs with, on stdout (redirect them into its env file); the
    # explanation on stderr, so that the redirected file holds only the variables.
    print(f"BITWARE_WORKER_ID={minted.credential.worker_id}")
    print(f"BITWARE_WORKER_TOKEN={minted.token}")
    done = "rotated (the old token no longer works)" if args.action == "rotate" else "created"
    print(
        f"credential {minted.credential.worker_id} {done}; the token is shown only this once",
        file=sys.stderr,
    )
    return 0
