"""`bitware up` on the machine's PostgreSQL with two granulators: every server shares one
database, a request runs end to end, a granulator killed with SIGKILL is restarted (saying why),
and SIGTERM stops the whole mesh cleanly."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from tests.cli.conftest import Up, bitware, kill_leftovers, make_client_key, start_up
from tests.common import scratch_database


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    # A plain libpq URL, as a person would paste it; `bitware up` picks the driver.
    with scratch_database("bitware_cli") as url:
        yield url


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Up]:
    running = start_up(
        tmp_path_factory.mktemp("pg-mesh"), "--postgres", database, "--granulators", "2"
    )
    try:
        yield running
    finally:
        if running.stop() != 0:
            kill_leftovers(running)


def test_two_granulators_on_postgres_run_a_request(mesh: Up) -> None:
    assert mesh.address("granulator-2") != mesh.address("granulator-1")
    # No SQLite files: every service keeps its tables in the one PostgreSQL database.
    assert not list(mesh.data.glob("**/*.db"))
    # Workers register just after they report ready: give the second one a moment.
    for _ in range(40):
        status = bitware(
            "status", "--data", str(mesh.data), BITWARE_ADMIN_PASSWORD=mesh.admin_password
        )
        assert status.returncode == 0, status.stderr
        if "workers        2 healthy of 2 registered" in status.stdout:
            break
        time.sleep(0.25)
    assert "workers        2 healthy of 2 registered" in status.stdout

    client = make_client_key(mesh)
    result = bitware(
        "run",
        "--data",
        str(mesh.data),
        "--topic",
        "Databases",
        "--json",
        BITWARE_API_KEY=client.api_key,
    )
    assert result.returncode == 0, result.stderr
    assert '"EXECUTION_STATUS_SUCCEEDED"' in result.stdout


def test_a_killed_granulator_is_restarted_saying_why(mesh: Up) -> None:
    pid = mesh.pid("granulator-2")
    os.kill(pid, signal.SIGKILL)
    mesh.wait_for(
        rf"^granulator-2 \(pid {pid}\) was killed by SIGKILL; restarting in 1s \(restart 1\)$"
    )
    # With what it logged last (here: its ordinary lines, nothing about a signal).
    log = mesh.data / "logs" / "granulator-2.log"
    mesh.wait_for(rf"^  last lines of {re.escape(str(log))}:$")
    assert mesh.wait_for(r"^  \| (.*service=granulator.*)$")
    back = mesh.wait_for(r"^granulator-2 is back at (\S+) \(pid (\d+)\)$", within=60)
    assert back.group(1) == mesh.address("granulator-2")  # the same port as before
    assert int(back.group(2)) != pid
    status = bitware("status", "--data", str(mesh.data))
    assert status.returncode == 0, status.stdout + status.stderr


def test_sigterm_stops_every_server(mesh: Up) -> None:
    pids = [mesh.pid(name) for name in ("kam", "orchestrator", "granulator-1", "gateway")]
    assert mesh.stop() == 0
    mesh.wait_for(r"^stopped$")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
