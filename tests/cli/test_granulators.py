"""`bitware up --granulators 3` as real processes on the embedded SQLite default.

The granulators share one job store, so the review stage of a `course_reviewed` execution finds
the generated job whichever granulator it runs on, and every deliverable answers through the
gateway and through grpcurl on every granulator; a structure template changed on one is used by
every granulator at once. A granulator killed with SIGKILL mid-generation leaves no job
`running`: its restart ends them as failed (`WORKER_RESTARTED`), the orchestrator's attempts
say the same, and every execution still succeeds on a retry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from granulator_server.domain import SEED_TEMPLATES, generate_offline
from tests.cli.conftest import ClientKey, Up, kill_leftovers, make_client_key, start_up
from tests.granulator.fake_openai import FakeOpenAI, reply

T = TypeVar("T")
GRPCURL = Path(sys.executable).parent / "grpcurl"
GRANULATORS = ("granulator-1", "granulator-2", "granulator-3")
EXECUTIONS = 30
SPEC = {"topic": "Resilience", "audience": "engineers", "granularity": 2}
COURSE = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
DOCUMENT = generate_offline(COURSE, "Resilience", "engineers", 2, {})
ENDED = {"EXECUTION_STATUS_SUCCEEDED", "EXECUTION_STATUS_FAILED", "EXECUTION_STATUS_CANCELLED"}


class ThreadedOpenAI:
    """The scripted OpenAI server (`FakeOpenAI`) on an event loop in a thread of its own, for
    test code that drives a mesh of processes synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = FakeOpenAI()
        self.base_url = self._run(self.fake.start())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def answer(self, count: int, delay: float) -> None:
        """The next `count` requests get a valid course, each after `delay` seconds."""

        async def script() -> None:
            self.fake.script.clear()
            self.fake.add(*(reply(DOCUMENT, delay=delay) for _ in range(count)))

        self._run(script())

    def close(self) -> None:
        self._run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture(scope="module")
def openai() -> Iterator[ThreadedOpenAI]:
    server = ThreadedOpenAI()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, openai: ThreadedOpenAI) -> Iterator[Up]:
    running = start_up(
        tmp_path_factory.mktemp("three-granulators"),
        "--granulators",
        "3",
        env={"BITWARE_OPENAI_BASE_URL": openai.base_url, "BITWARE_OPENAI_API_KEY": "test-key"},
    )
    try:
        yield running
    finally:
        if running.stop() != 0:
            kill_leftovers(running)


@pytest.fixture(scope="module")
def client(mesh: Up) -> ClientKey:
    key = make_client_key(mesh, tier="enterprise")  # 30 executions at once
    with httpx.Client(base_url=f"http://{mesh.address('gateway')}", timeout=10) as http:
        http.post(
            "/api/auth/login",
            json={"email": "admin@bitware.local", "password": mesh.admin_password},
        ).raise_for_status()
        deadline = time.monotonic() + 60
        while True:  # granulators register just after they report ready
            workers = http.get("/api/workers").json()["workers"]
            healthy = [w for w in workers if w["state"] == "WORKER_STATE_HEALTHY"]
            if len(healthy) == len(GRANULATORS):
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.25)
    return key


def gateway(mesh: Up, client: ClientKey) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{mesh.address('gateway')}",
        headers={"X-API-Key": client.api_key},
        timeout=30,
    )


def submit(http: httpx.Client, count: int) -> list[str]:
    """Creates and executes `count` course_reviewed requests; their execution ids."""
    ids = []
    for _ in range(count):
        body = {**SPEC, "structure_type": "course", "master_template": "course_reviewed"}
        created = http.post("/api/requests", json=body)
        assert created.status_code == 200, created.text
        request_id = created.json()["request"]["request_id"]
        executed = http.post(f"/api/requests/{request_id}/execute")
        assert executed.status_code == 200, executed.text
        ids.append(executed.json()["execution_id"])
    return ids


def wait_for_ends(http: httpx.Client, ids: list[str], within: float = 90) -> list[dict[str, Any]]:
    """Each execution in full once every one of them has ended."""
    deadline = time.monotonic() + within
    while True:
        listed = http.get("/api/executions", params={"page_size": 200}).json()["executions"]
        statuses = {e["execution_id"]: e["status"] for e in listed}
        if all(statuses.get(i) in ENDED for i in ids):
            break
        left = [i for i in ids if statuses.get(i) not in ENDED]
        assert time.monotonic() < deadline, f"{len(left)} executions did not end: {left[:3]}"
        time.sleep(0.5)
    return [http.get(f"/api/executions/{i}").json()["execution"] for i in ids]


def grpcurl(address: str, header: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of `bitware.granulator.v1.GranulatorService/<method>` by the real grpcurl."""
    call = f"bitware.granulator.v1.GranulatorService/{method}"
    arguments = ["-plaintext", "-max-time", "20", "-H", header, "-d", json.dumps(body)]
    result = subprocess.run(
        [str(GRPCURL), *arguments, address, call],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"{method} {body} on {address}: {result.stderr}"
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def assert_deliverables_everywhere(mesh: Up, client: ClientKey, job_ids: list[str]) -> None:
    """Every job's structure answers 200 through the gateway and through grpcurl on every
    granulator, with the same elements."""
    with gateway(mesh, client) as http:
        through_gateway = {}
        for job_id in job_ids:
            answer = http.get(f"/api/jobs/{job_id}/structure")
            assert answer.status_code == 200, f"{job_id}: {answer.status_code} {answer.text}"
            through_gateway[job_id] = len(answer.json()["elements"])
    assert all(count > 1 for count in through_gateway.values())
    asks = [(mesh.address(name), job_id) for name in GRANULATORS for job_id in job_ids]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(
                lambda ask: grpcurl(
                    ask[0], f"x-api-key: {client.api_key}", "GetStructure", {"job_id": ask[1]}
                ),
                asks,
            )
        )
    for (address, job_id), answer in zip(asks, answers, strict=True):
        assert answer["job_id"] == job_id, address
        assert len(answer["elements"]) == through_gateway[job_id], address


def jobs_in_store(mesh: Up) -> list[dict[str, Any]]:
    """Every job in the granulators' one shared database."""
    connection = sqlite3.connect(mesh.data / "granulator.db", timeout=10)
    try:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT id, execution_id, stage_id, attempt, action, status, worker_id, result"
            " FROM jobs"
        ).fetchall()
        return [dict(row) for row in rows]
    finally:
        connection.close()


def test_three_granulators_share_one_job_store(
    mesh: Up, client: ClientKey, openai: ThreadedOpenAI
) -> None:
    # Every granulator uses the one database in the data folder, none a file of its own.
    assert list(mesh.data.glob("**/granulator.db")) == [mesh.data / "granulator.db"]
    openai.answer(EXECUTIONS * 2, delay=0.2)
    with gateway(mesh, client) as http:
        executions = wait_for_ends(http, submit(http, EXECUTIONS))
    failed = [
        (e["execution_id"], e["error"])
        for e in executions
        if e["status"] != "EXECUTION_STATUS_SUCCEEDED"
    ]
    assert not failed, failed
    # Reviews ran on other granulators than the one that generated their job, and found it.
    made_by: dict[tuple[str, str], str] = {}
    for job in jobs_in_store(mesh):
        made_by[job["execution_id"], job["action"]] = job["worker_id"]
    elsewhere = [
        e for e, a in made_by if a == "validate" and made_by[e, a] != made_by[e, "generate"]
    ]
    assert elsewhere, made_by
    assert_deliverables_everywhere(mesh, client, [e["job_id"] for e in executions])


def test_a_template_changed_on_one_granulator_is_used_by_every_one_at_once(mesh: Up) -> None:
    with httpx.Client(base_url=f"http://{mesh.address('gateway')}", timeout=10) as http:
        login = http.post(
            "/api/auth/login",
            json={"email": "admin@bitware.local", "password": mesh.admin_password},
        )
        login.raise_for_status()
    admin = f"x-bitware-session-token: {login.json()['session_token']}"
    addresses = [mesh.address(name) for name in GRANULATORS]
    # Every granulator has read the templates (and keeps a copy of them).
    before = [grpcurl(a, admin, "GetTemplate", {"query": "quiz"}) for a in addresses]
    version = before[0]["template"]["version"]
    assert [b["template"]["version"] for b in before] == [version] * len(GRANULATORS)
    change = {"name": "quiz_standard", "description": "Edited on granulator-1."}
    updated = grpcurl(
        addresses[0],
        admin,
        "UpdateTemplate",
        {"template": change, "update_mask": {"paths": ["description"]}},
    )
    assert updated["template"]["version"] == version + 1
    for address in addresses[1:]:
        seen = grpcurl(address, admin, "GetTemplate", {"query": "quiz"})["template"]
        assert (seen["version"], seen["description"]) == (version + 1, change["description"])


def test_a_granulator_killed_mid_run_leaves_no_job_running(
    mesh: Up, client: ClientKey, openai: ThreadedOpenAI
) -> None:
    openai.answer(EXECUTIONS * 3, delay=1.5)  # slow enough to be killed mid-generation
    with gateway(mesh, client) as http:
        ids = submit(http, EXECUTIONS)
        # granulator-1, the first the gateway was given, so that reading jobs while it is down
        # shows that the gateway turns to the others.
        victim, deadline = "granulator-1", time.monotonic() + 60
        while True:
            running = [
                j["id"]
                for j in jobs_in_store(mesh)
                if j["status"] == "running"
                and j["action"] == "generate"
                and j["worker_id"] == victim
            ]
            if running:
                break
            assert time.monotonic() < deadline, f"no generation started on {victim}"
            time.sleep(0.1)
        pid = mesh.pid(victim)
        os.kill(pid, signal.SIGKILL)
        mesh.wait_for(rf"^{victim} \(pid {pid}\) was killed by SIGKILL")
        for job_id in running * 3:  # while it is down (it is restarted after 1 s)
            answer = http.get(f"/api/jobs/{job_id}")
            assert answer.status_code == 200, answer.text
        mesh.wait_for(rf"^{victim} is back at", within=60)
        executions = wait_for_ends(http, ids)
    failed = [
        (e["execution_id"], e["error"])
        for e in executions
        if e["status"] != "EXECUTION_STATUS_SUCCEEDED"
    ]
    assert not failed, failed

    stores = jobs_in_store(mesh)
    assert [j for j in stores if j["status"] == "running"] == []
    ended = [j for j in stores if j["status"] == "failed"]
    assert ended, "the kill interrupted no job"
    for job in ended:
        assert job["worker_id"] == victim
        assert json.loads(job["result"])["error"]["reason"] == "WORKER_RESTARTED"
    # The orchestrator agrees: each attempt whose job was ended did not succeed, and a later
    # attempt of the same stage did.
    by_id = {e["execution_id"]: e for e in executions}
    for job in ended:
        stage = next(
            s for s in by_id[job["execution_id"]]["stages"] if s["stage_id"] == job["stage_id"]
        )
        attempts = {a["number"]: a for a in stage["attempts"]}
        assert attempts[job["attempt"]]["worker_id"] == victim
        assert attempts[job["attempt"]]["status"] in {
            "ATTEMPT_STATUS_FAILED",
            "ATTEMPT_STATUS_ABANDONED",
            "ATTEMPT_STATUS_TIMED_OUT",
        }
        assert stage["attempts"][-1]["status"] == "ATTEMPT_STATUS_SUCCEEDED"
    assert_deliverables_everywhere(mesh, client, [e["job_id"] for e in executions])
