"""Writes the secret env files a deployment reads (docs/DEPLOYMENT.md): fresh tokens for every
service and granulator, KAM's list of their hashes, the first admin's password and the database
URL. Run once per deployment, from the repository after `make setup`:

    .venv/bin/python deploy/make_env.py deploy/env                        # for compose.yaml
    .venv/bin/python deploy/make_env.py deploy/kubernetes/env \\
        --database-url postgresql+psycopg://bitware:PASSWORD@db.internal:5432/bitware

Files (mode 0600; never commit them, .gitignore keeps them out):
  postgres.env           compose's PostgreSQL: user, password, database
  database.env           BITWARE_DATABASE_URL, shared by every service (each keeps its own tables)
  kam.env                KAM's own credential, the token hashes of all others, the first admin
  orchestrator.env, gateway.env, granulator-<i>.env   each one's BITWARE_WORKER_ID and _TOKEN
  granulator-tokens.env  `granulator-<i>=<token>` lines: Kubernetes mounts them as one file per
                         granulator pod (BITWARE_WORKER_TOKEN_FILE)

This is `bitware credentials bootstrap NAME` for a whole deployment at once: KAM installs every
credential by hash when it starts, so every server can start together, before anyone can sign
in. KAM keeps only hashes. Workers added later get their credential from a running KAM:
`bitware credentials create-worker NAME`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from bitware_core.auth import hash_secret, new_secret
from kam_server.credentials import WORKER_TOKEN_PREFIX

ADMIN_EMAIL = "admin@bitware.local"
#: Credentials for this many granulators: compose runs 3; Kubernetes scales up to 8 (the
#: HorizontalPodAutoscaler's maxReplicas).
DEFAULT_GRANULATORS = 8


def env_text(values: dict[str, str]) -> str:
    return "".join(f"{name}={value}\n" for name, value in values.items())


def make_files(
    granulators: int, database_url: str, admin_email: str = ADMIN_EMAIL
) -> dict[str, str]:
    """File name → content of every env file of one deployment, with fresh secrets."""
    db_password = secrets.token_urlsafe(24)
    url = database_url or f"postgresql+psycopg://bitware:{db_password}@postgres:5432/bitware"
    granulator_ids = [f"granulator-{i}" for i in range(granulators)]
    tokens = {
        worker_id: new_secret(WORKER_TOKEN_PREFIX)
        for worker_id in ["kam", "orchestrator", "gateway", *granulator_ids]
    }
    kinds = {
        worker_id: "worker" if worker_id in granulator_ids else "service" for worker_id in tokens
    }
    files = {
        "database.env": env_text({"BITWARE_DATABASE_URL": url}),
        "kam.env": env_text(
            {
                "BITWARE_WORKER_ID": "kam",
                "BITWARE_WORKER_TOKEN": tokens["kam"],
                "BITWARE_BOOTSTRAP_CREDENTIALS": ",".join(
                    f"{worker_id}:{kinds[worker_id]}:{hash_secret(token)}"
                    for worker_id, token in tokens.items()
                ),
                "BITWARE_BOOTSTRAP_ADMIN_EMAIL": admin_email,
                "BITWARE_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_urlsafe(18),
            }
        ),
        "granulator-tokens.env": env_text({i: tokens[i] for i in granulator_ids}),
    }
    if not database_url:
        files["postgres.env"] = env_text(
            {"POSTGRES_USER": "bitware", "POSTGRES_PASSWORD": db_password, "POSTGRES_DB": "bitware"}
        )
    for worker_id in ["orchestrator", "gateway", *granulator_ids]:
        files[f"{worker_id}.env"] = env_text(
            {"BITWARE_WORKER_ID": worker_id, "BITWARE_WORKER_TOKEN": tokens[worker_id]}
        )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the env files")
    parser.add_argument(
        "--granulators",
        type=int,
        default=DEFAULT_GRANULATORS,
        help=f"credentials for granulator-0 … granulator-(N-1) (default {DEFAULT_GRANULATORS})",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="SQLAlchemy URL of the PostgreSQL database (default: compose's own `postgres`)",
    )
    args = parser.parse_args(argv)
    files = make_files(args.granulators, args.database_url)
    existing = [name for name in files if (args.folder / name).exists()]
    if existing:
        print(
            f"make_env: {args.folder} already holds {', '.join(sorted(existing))}: new secrets "
            "would lock out the running services; remove the folder to start afresh",
            file=sys.stderr,
        )
        return 1
    args.folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = args.folder / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
    print(f"wrote {len(files)} env files to {args.folder}; the first admin is {ADMIN_EMAIL}")
    print(f"(password: BITWARE_BOOTSTRAP_ADMIN_PASSWORD in {args.folder / 'kam.env'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
