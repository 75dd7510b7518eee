"""The `bitware` command run as a real subprocess, and `bitware up` as a real mesh of processes
(every port 0) that the commands under test find through its data folder."""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

#: Every port picked free by the system.
FREE_PORTS = ["--kam-port", "0", "--orchestrator-port", "0", "--granulator-port", "0"]
FREE_PORTS += ["--gateway-port", "0"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any BITWARE_ setting that could leak in, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITWARE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def bitware(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `python -m bitware_mesh.cli ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "bitware_mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**env),
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Asserts the command failed with exactly one `bitware: …` line and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bitware: "), lines[0]
    return lines[0]


@dataclass
class Up:
    """A running `bitware up` and what it printed."""

    process: subprocess.Popen[str]
    data: Path
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread = field(init=False)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for(self, pattern: str, within: float = 60.0) -> re.Match[str]:
        """The first printed line matching `pattern`, waiting for it if need be."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        with self.changed:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                finished = self.process.poll() is not None and not self.reader.is_alive()
                if left <= 0 or finished:
                    output = "\n".join(self.lines)
                    raise AssertionError(f"no line matching {pattern!r}; it printed:\n{output}")
                self.changed.wait(min(left, 0.5))

    def start_reading(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def address(self, name: str) -> str:
        return self.wait_for(rf"^{name}\s+(\S+)\s+pid").group(1)

    def pid(self, name: str) -> int:
        return int(self.wait_for(rf"^{name}\s+\S+\s+pid (\d+)").group(1))

    @property
    def admin_password(self) -> str:
        return self.wait_for(r"^admin\s+\S+ / (\S+)").group(1)

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C would; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.reader.join(timeout=5)


def start_up(data: Path, *extra: str, env: dict[str, str] | None = None) -> Up:
    """`bitware up` on free ports with the arguments `extra` and the settings `env`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bitware_mesh.cli", "up", "--data", str(data), *FREE_PORTS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(**(env or {})),
    )
    up = Up(process, data)
    up.start_reading()
    try:
        up.wait_for(r"^ready: ", within=90)
        # Every server came up first time (a crash at start-up would be restarted, and hidden).
        assert not [line for line in up.lines if "exited with code" in line], up.lines
    except AssertionError:
        up.stop()
        kill_leftovers(up)  # a failed start once left a whole mesh running behind the test
        raise
    return up


def kill_leftovers(up: Up) -> None:
    """If the supervisor could not stop its children, do not leave them running."""
    for line in up.lines:
        if match := re.search(r"pid (\d+)", line):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(match.group(1)), signal.SIGKILL)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = start_up(tmp_path_factory.mktemp("mesh"))
    try:
        yield running
    finally:
        if running.stop() != 0:
            kill_leftovers(running)


@dataclass
class ClientKey:
    client_id: str
    api_key: str


def make_client_key(up: Up, name: str = "Acme Learning", tier: str = "standard") -> ClientKey:
    """A client with an API key, made through the gateway as the admin."""
    base = f"http://{up.address('gateway')}"
    with httpx.Client(base_url=base, timeout=10) as http:
        login = http.post(
            "/api/auth/login",
            json={"email": "admin@bitware.local", "password": up.admin_password},
        )
        login.raise_for_status()
        client = http.post(
            "/api/clients",
            json={
                "company_name": name,
                "contact_email": "ops@acme.test",
                "tier": tier,
                "monthly_budget_usd": 50,
            },
        )
        client.raise_for_status()
        client_id = client.json()["client"]["client_id"]
        key = http.post(f"/api/clients/{client_id}/api-keys", json={"name": "cli tests"})
        key.raise_for_status()
        return ClientKey(client_id, key.json()["key"])


@pytest.fixture(scope="module")
def client_key(up: Up) -> ClientKey:
    return make_client_key(up)


# ---------------------------------------------------------------- `bitware serve`


def random_loopback() -> str:
    """A loopback address no other test is likely to use, so fixed ports cannot collide."""
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


@dataclass
class Served:
    """One `bitware serve NAME` process, its ready line and its log."""

    name: str
    process: subprocess.Popen[str]
    log: Path
    address: str = ""
    metrics: str = ""
    ready: str = field(default="", repr=False)

    def wait_ready(self, within: float = 60.0) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if readable:
                line = self.process.stdout.readline()
                if not line:
                    break
                self.ready = line.strip()
                match = re.fullmatch(
                    rf"BITWARE_READY {self.name} (\S+)(?: metrics=(\S+))?", line.strip()
                )
                assert match, line
                self.address, self.metrics = match.group(1), match.group(2) or ""
                return
        raise AssertionError(f"{self.name} not ready; its log:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def serve(name: str, folder: Path, **settings: str) -> Served:
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bitware_mesh.cli", "serve", name],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=clean_env(**settings),
    )
    served = Served(name, process, log)
    served.wait_ready()
    return served


def minted(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The BITWARE_WORKER_ID / BITWARE_WORKER_TOKEN lines `credentials create-*` prints."""
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"BITWARE_WORKER_ID", "BITWARE_WORKER_TOKEN"}, result.stdout
    assert "shown only this once" in result.stderr
    return lines
