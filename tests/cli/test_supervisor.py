"""The supervisor behind `bitware up` tells the truth: a server that crashes at start fails the
start at once with the last lines of its log (and nothing is left running); every server's
output is in DATA/logs/<server>.log; `--metrics` gives every server a metrics port of its own,
even with several granulators, and a BITWARE_METRICS_ADDRESS in the environment is not handed
to every server. And what it does to a data folder before it starts the servers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bitware_mesh.supervisor import ChildLog, adopt_old_granulator_store
from tests.cli.conftest import (
    FREE_PORTS,
    bitware,
    clean_env,
    kill_leftovers,
    make_client_key,
    start_up,
)


def test_a_server_that_crashes_at_start_shows_its_last_log_lines(tmp_path: Path) -> None:
    # Only the granulator reads the price table: KAM and the orchestrator start, it exits.
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bitware_mesh.cli", "up", "--data", str(tmp_path), *FREE_PORTS],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(BITWARE_PRICE_TABLE="{not json"),
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    # At once, not after the 30 s start-up timeout, and in one line on stderr.
    assert time.monotonic() - started < 25
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "bitware: granulator-1 exited with code 2 before it was ready: granulator: "
        "BITWARE_PRICE_TABLE is not JSON"
    ), result.stderr
    out = result.stdout.splitlines()
    headline = next(i for i, line in enumerate(out) if line.startswith("granulator-1 (pid"))
    assert re.fullmatch(r"granulator-1 \(pid \d+\) exited with code 2", out[headline]), out
    log = tmp_path / "logs" / "granulator-1.log"
    assert out[headline + 1] == f"  last lines of {log}:"
    tail = [line.removeprefix("  | ") for line in out[headline + 2 :] if line.startswith("  | ")]
    assert tail[-1].startswith("granulator: BITWARE_PRICE_TABLE is not JSON")
    assert tail[-1] in log.read_text()
    # The servers already running were stopped (each log starts with its pid).
    logs = "".join(path.read_text() for path in (tmp_path / "logs").glob("*.log"))
    pids = [int(pid) for pid in re.findall(r"^--- bitware up started pid (\d+)$", logs, re.M)]
    assert len(pids) == 4, logs
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_shows_a_crashing_servers_last_log_lines_too(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bitware_mesh.cli", "demo", "--data", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(BITWARE_PRICE_TABLE="[1, 2]"),
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bitware: granulator-1 exited with code 2 before it was ready: granulator: " in (
        result.stderr
    )
    assert f"  last lines of {tmp_path / 'demo' / 'logs' / 'granulator-1.log'}:" in result.stdout
    assert "  | granulator: BITWARE_PRICE_TABLE must be a JSON object" in result.stdout


def test_metrics_ports_are_per_server_and_logs_are_per_server(tmp_path: Path) -> None:
    # Set for one process, it must not reach every server (they would fight over the port).
    up = start_up(
        tmp_path,
        "--metrics",
        "--granulators",
        "3",
        env={"BITWARE_METRICS_ADDRESS": "127.0.0.1:9"},
    )
    try:
        up.wait_for(r"^note: BITWARE_METRICS_ADDRESS is a setting of one server")
        names = ["kam", "orchestrator", "granulator-1", "granulator-2", "granulator-3"]
        metrics = {
            name: up.wait_for(rf"^{name}\s+\S+\s+pid \d+  metrics http://(\S+)/metrics$").group(1)
            for name in [*names, "gateway"]
        }
        assert metrics["gateway"] == up.address("gateway")  # its own HTTP port
        assert len(set(metrics.values())) == 6, metrics
        for name in names:
            with urllib.request.urlopen(f"http://{metrics[name]}/metrics", timeout=10) as answer:
                assert answer.status == 200
                assert "bitware_rpc_total" in answer.read().decode(), name
        mesh = json.loads((tmp_path / "mesh.json").read_text())
        assert mesh["metrics"] == metrics
        for name in [*names, "gateway"]:
            log = (tmp_path / "logs" / f"{name}.log").read_text()
            assert f"service={name.split('-')[0]} event=serving" in log, log
        assert not [line for line in up.lines if "restarting" in line], up.lines
    finally:
        if up.stop() != 0:
            kill_leftovers(up)


def test_a_servers_log_is_rotated_by_size_and_its_tail_kept(tmp_path: Path) -> None:
    log = ChildLog(tmp_path / "logs" / "kam.log", max_bytes=1000, backups=2)
    log.started(4242)
    for index in range(200):
        log.write(f"line {index:03d} " + "x" * 40)
    log.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["kam.log", "kam.log.1", "kam.log.2"]  # two older files, no more
    assert all((tmp_path / "logs" / name).stat().st_size <= 1000 for name in files)
    assert "line 199 " in (tmp_path / "logs" / "kam.log").read_text()
    assert [line[:8] for line in log.tail] == [f"line {i:03d}" for i in range(188, 200)]


def test_a_restarted_kam_keeps_its_port_and_what_it_was_told(tmp_path: Path) -> None:
    # KAM learns the orchestrator's address on stdin after it starts; a restarted KAM must get
    # it from the start, and bind the same port, so that its peers and requests keep working.
    up = start_up(tmp_path)
    try:
        pid = up.pid("kam")
        os.kill(pid, signal.SIGKILL)
        back = up.wait_for(r"^kam is back at (\S+) \(pid (\d+)\)$", within=60)
        assert back.group(1) == up.address("kam")
        client = make_client_key(up)
        result = bitware(
            "run", "--data", str(tmp_path), "--topic", "Restarts", BITWARE_API_KEY=client.api_key
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        if up.stop() != 0:
            kill_leftovers(up)


def _store(path: Path, job_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE jobs (id TEXT)")
        connection.execute("INSERT INTO jobs VALUES (?)", (job_id,))
    connection.close()


def test_the_first_granulators_own_store_becomes_the_shared_one(tmp_path: Path) -> None:
    _store(tmp_path / "granulator-1" / "granulator.db", "job_first")
    _store(tmp_path / "granulator-2" / "granulator.db", "job_second")

    said = adopt_old_granulator_store(tmp_path)

    assert said.startswith("moved granulator-1/granulator.db to granulator.db")
    assert said.endswith("not carried over: granulator-2/granulator.db")
    assert not (tmp_path / "granulator-1" / "granulator.db").exists()
    with sqlite3.connect(tmp_path / "granulator.db") as connection:
        assert connection.execute("SELECT id FROM jobs").fetchall() == [("job_first",)]
    connection.close()
    assert adopt_old_granulator_store(tmp_path) == ""  # once only


def test_an_existing_shared_store_is_left_alone(tmp_path: Path) -> None:
    _store(tmp_path / "granulator.db", "job_shared")
    _store(tmp_path / "granulator-1" / "granulator.db", "job_old")
    assert adopt_old_granulator_store(tmp_path) == ""
    assert (tmp_path / "granulator-1" / "granulator.db").exists()
    assert adopt_old_granulator_store(tmp_path / "empty") == ""
