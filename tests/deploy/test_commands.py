"""What a deployment runs beside `bitware serve`, as real processes: `bitware migrate` (the
migration job) on PostgreSQL, `bitware health` (the container health check) against real
servers, and a token read from a mounted secret file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from bitware_core.config import Settings, SettingsError
from bitware_mesh.inprocess import InProcessMesh
from bitware_mesh.supervisor import postgres_url
from tests.cli.conftest import bitware, one_line_error
from tests.common import scratch_database


def test_migrate_brings_every_service_schema_to_its_head() -> None:
    with scratch_database("bitware_migrate") as url:
        first = bitware("migrate", BITWARE_DATABASE_URL=postgres_url(url))
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [
            f"{service}: schema up to date" for service in ("kam", "orchestrator", "granulator")
        ]
        with psycopg.connect(url) as connection:
            for service in ("kam", "orchestrator", "granulator"):
                (version,) = connection.execute(
                    f"SELECT version_num FROM alembic_version_{service}"
                ).fetchall()
                assert version[0]
            tables = {
                row[0]
                for row in connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        assert {"users", "stages", "jobs"} <= tables
        again = bitware("migrate", "kam", BITWARE_DATABASE_URL=postgres_url(url))
        assert again.returncode == 0 and again.stdout == "kam: schema up to date\n"
        scripted = bitware("migrate", "kam", "--json", BITWARE_DATABASE_URL=postgres_url(url))
        assert json.loads(scripted.stdout) == {"up_to_date": ["kam"]}


def test_migrate_refuses_an_unknown_service() -> None:
    line = one_line_error(bitware("migrate", "gateway"))
    assert "no service gateway: choose from kam, orchestrator, granulator" in line


async def test_health_says_whether_a_server_serves(mesh: InProcessMesh) -> None:
    # The servers run on this test's event loop: run the command beside it, not on it.
    assert (await asyncio.to_thread(bitware, "health", mesh.kam.address)).returncode == 0
    # The container form: the server of this host, on BITWARE_PORT.
    port = mesh.orchestrator.address.rsplit(":", 1)[1]
    assert (await asyncio.to_thread(bitware, "health", BITWARE_PORT=port)).returncode == 0
    await mesh.granulators[0].stop(0)
    down = await asyncio.to_thread(bitware, "health", mesh.granulators[0].address)
    assert down.returncode == 1
    assert "unreachable" in down.stderr and "Traceback" not in down.stderr
    scripted = await asyncio.to_thread(bitware, "health", mesh.kam.address, "--json")
    assert json.loads(scripted.stdout)["state"] == "serving"


def test_health_needs_an_address() -> None:
    assert "BITWARE_PORT" in one_line_error(bitware("health"))


def test_a_worker_token_can_come_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "granulator-0"
    secret.write_text("bwt_from_a_file\n")
    settings = Settings.from_env({"BITWARE_WORKER_TOKEN_FILE": str(secret)})
    assert settings.auth.worker_token == "bwt_from_a_file"
    # An explicit token wins over the file.
    both = {"BITWARE_WORKER_TOKEN_FILE": str(secret), "BITWARE_WORKER_TOKEN": "bwt_env"}
    assert Settings.from_env(both).auth.worker_token == "bwt_env"
    with pytest.raises(SettingsError, match=r"BITWARE_WORKER_TOKEN_FILE=.*cannot read it"):
        Settings.from_env({"BITWARE_WORKER_TOKEN_FILE": str(tmp_path / "missing")})
