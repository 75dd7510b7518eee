"""Writes a new Alembic revision for one service from the difference between its models and its
migrations so far: `python scripts/new_migration.py kam "add user avatars"`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import alembic.command
import alembic.config
from sqlalchemy import create_engine

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    service, message = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/schema.db"
        config = alembic.config.Config()
        config.set_main_option("script_location", str(ROOT / f"{service}_server" / "migrations"))
        config.set_main_option("version_table", f"alembic_version_{service}")
        config.set_main_option("sqlalchemy.url", url)
        with create_engine(url).begin() as connection:
            config.attributes["connection"] = connection
            alembic.command.upgrade(config, "head")
            alembic.command.revision(config, message=message, autogenerate=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
