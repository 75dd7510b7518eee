"""`bitware keys create|list|revoke` and `bitware templates list|show|create`: a client's API
keys and the master templates, at KAM, through `bitware_client`. Keys and template creation need
the admin (BITWARE_ADMIN_PASSWORD), which these commands prefer when both credentials are set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import json_format

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, templates_pb2
from bitware_mesh.cli.common import (
    CliError,
    api_command,
    as_json,
    open_client,
    print_json,
    words,
)
from bitware_mesh.cli.output import print_table


def add_admin(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="a client's API keys", description="API keys.")
    group = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = api_command(group, "create", "a new API key (the secret is shown once)", keys_create)
    create.add_argument("--client", required=True, help="the client's id")
    create.add_argument("--name", default="", help="a name for people")
    listing = api_command(group, "list", "a client's API keys (never their secrets)", keys_list)
    listing.add_argument("--client", default="", help="the client's id (default: the caller's)")
    revoke = api_command(group, "revoke", "revoke an API key at once", keys_revoke)
    revoke.add_argument("api_key_id", metavar="KEY_ID")

    templates = commands.add_parser(
        "templates", help="master templates", description="Master templates, at KAM."
    )
    group = templates.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = api_command(group, "list", "the latest version of each template", templates_list)
    listing.add_argument("--deprecated", action="store_true", help="include deprecated ones")
    show = api_command(group, "show", "one template with its stages", templates_show)
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", type=int, default=0, help="this version (default: latest)")
    create = api_command(
        group, "create", "store a template from its JSON (a new version if it exists)", t_create
    )
    create.add_argument("file", metavar="FILE", help="the template as JSON; - reads stdin")


def _key_row(key: accounts_pb2.ApiKey) -> tuple[str, ...]:
    used = key.last_used_time.ToDatetime() if key.HasField("last_used_time") else None
    return (
        key.api_key_id,
        key.name,
        f"{key.prefix}…",
        key.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"),
        used.strftime("%Y-%m-%d %H:%M") if used else "never",
    )


async def keys_create(args: argparse.Namespace) -> int:
    async with open_client(args, prefer_admin=True) as (client, _, _):
        key, secret = await client.keys.create(args.client, args.name)
    if args.json:
        print_json({"api_key": as_json(key), "key": secret})
        return 0
    print(secret)
    print(
        f"API key {key.api_key_id} for {key.client_id}: the line above is the secret, shown "
        "this once; it is stored only as a hash",
        file=sys.stderr,
    )
    return 0


async def keys_list(args: argparse.Namespace) -> int:
    async with open_client(args, prefer_admin=True) as (client, _, _):
        found = await client.keys.list(args.client)
    if args.json:
        print_json({"api_keys": [as_json(k) for k in found]})
        return 0
    print_table(("KEY", "NAME", "PREFIX", "CREATED", "LAST USED"), [_key_row(k) for k in found])
    return 0


async def keys_revoke(args: argparse.Namespace) -> int:
    async with open_client(args, prefer_admin=True) as (client, _, _):
        key = await client.keys.revoke(args.api_key_id)
    if args.json:
        print_json(as_json(key))
    else:
        print(f"API key {key.api_key_id} revoked")
    return 0


async def templates_list(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        found = await client.templates.list(include_deprecated=args.deprecated)
    if args.json:
        print_json({"templates": [as_json(t) for t in found]})
        return 0
    print_table(
        ("NAME", "VERSION", "TYPE", "STAGES", "COST", "DESCRIPTION"),
        [
            (
                t.name + (" (deprecated)" if t.deprecated else ""),
                t.version,
                words(common_pb2.StructureType.Name(t.structure_type), "STRUCTURE_TYPE_"),
                len(t.stages),
                f"${t.cost_estimate_usd:.2f}",
                t.description,
            )
            for t in found
        ],
    )
    return 0


async def templates_show(args: argparse.Namespace) -> int:
    async with open_client(args) as (client, _, _):
        template = await client.templates.get(args.name, args.version)
    if args.json:
        print_json(as_json(template))
        return 0
    kind = words(common_pb2.StructureType.Name(template.structure_type), "STRUCTURE_TYPE_")
    print(f"{template.name} v{template.version} · {kind} · ${template.cost_estimate_usd:.2f}")
    if template.description:
        print(template.description)
    print_table(
        ("STAGE", "NAME", "CAPABILITY", "ACTION"),
        [(i + 1, s.name, s.capability, s.action) for i, s in enumerate(template.stages)],
    )
    return 0


def _read_template(file: str) -> templates_pb2.MasterTemplate:
    """The template in FILE (JSON with the proto's field names), checked before any call."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        return json_format.Parse(text, templates_pb2.MasterTemplate())
    except OSError as error:
        raise CliError(f"cannot read {file}: {error.strerror}") from None
    except json_format.ParseError as error:
        first = str(error).splitlines()[0]  # the rest lists every field of the message
        raise CliError(f"{file} is not a template: {first}") from None


async def t_create(args: argparse.Namespace) -> int:
    template = _read_template(args.file)
    async with open_client(args, prefer_admin=True) as (client, _, _):
        template = await client.templates.create(template)
    if args.json:
        print_json(as_json(template))
    else:
        print(f"template {template.name} v{template.version} stored")
    return 0
