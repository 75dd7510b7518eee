"""The deployment's topology as processes (what deploy/compose.yaml and deploy/kubernetes/ run in
containers): `bitware serve` per server, each on its own loopback address as if on its own host,
over one PostgreSQL database — 2 KAM, 2 orchestrators, 3 granulators and a gateway.

As in a deployment: the schema comes from `bitware migrate` (the migration job), the secrets from
deploy/make_env.py's env files (one granulator reads its token from a file, as a Kubernetes pod
does), KAM and the orchestrators are reached through one DNS name each (`dns://…/kam.test:50051`,
round robin over both replicas), every server listens on its standard port, and a granulator on
a further host joins late with a credential minted by `bitware credentials create-worker`.
Executions submitted through the gateway succeed, their structures are readable through it, and
the work spreads over every granulator, the late one included."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bitware_mesh.supervisor import postgres_url
from tests.cli.conftest import Served, bitware, minted, random_loopback, serve
from tests.common import scratch_database
from tests.dns_server import DnsServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
import make_env

PORTS = {"kam": 50051, "orchestrator": 50052, "granulator": 50053, "gateway": 8080}
#: Executions per batch, submitted at once; each is two granulator stages (generate, review).
BATCH = 8


def env_file(content: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(.*)$", content, re.MULTILINE))


@dataclass
class Mesh:
    folder: Path
    #: The env files deploy/make_env.py wrote, by file name.
    files: dict[str, dict[str, str]]
    dns: DnsServer | None = None
    served: dict[str, Served] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)

    def host(self) -> str:
        """A loopback address no server of this mesh uses yet: its own "host"."""
        while (address := random_loopback()) in self.hosts:
            pass
        self.hosts.add(address)
        return address

    def target(self, server: str) -> str:
        assert self.dns is not None
        return self.dns.target(f"{server}.test", PORTS[server])

    def start(self, name: str, server: str, host: str, **settings: str) -> Served:
        folder = self.folder / name
        folder.mkdir()
        self.served[name] = serve(
            server,
            folder,
            BITWARE_HOST=host,
            BITWARE_PORT=str(PORTS[server]),
            BITWARE_KAM_ADDRESS=self.target("kam"),
            BITWARE_ORCHESTRATOR_ADDRESS=self.target("orchestrator"),
            BITWARE_GRANULATOR_ADDRESS=self.target("granulator"),
            **settings,
        )
        return self.served[name]

    def granulator(self, name: str, host: str, **credential: str) -> Served:
        # One job at a time each, so that a batch must spread over the granulators.
        return self.start(
            name,
            "granulator",
            host,
            BITWARE_MAX_CONCURRENT_JOBS="1",
            **self.files["database.env"],
            **credential,
        )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("multi-host")
    with scratch_database("bitware_multi_host") as url:
        database = postgres_url(url)
        migrated = bitware("migrate", BITWARE_DATABASE_URL=database)
        assert migrated.returncode == 0, migrated.stderr
        files = {
            name: env_file(content) for name, content in make_env.make_files(3, database).items()
        }
        running = Mesh(folder, files)
        hosts = {
            server: [running.host() for _ in range(count)]
            for server, count in (("kam", 2), ("orchestrator", 2), ("granulator", 3))
        }
        with DnsServer({f"{s}.test": ips for s, ips in hosts.items()}) as running.dns:
            try:
                for index, host in enumerate(hosts["kam"]):
                    running.start(
                        f"kam-{index}",
                        "kam",
                        host,
                        BITWARE_METRICS_ADDRESS=f"{host}:0",
                        **files["database.env"],
                        **files["kam.env"],
                    )
                for index, host in enumerate(hosts["orchestrator"]):
                    running.start(
                        f"orchestrator-{index}",
                        "orchestrator",
                        host,
                        BITWARE_METRICS_ADDRESS=f"{host}:0",
                        **files["database.env"],
                        **files["orchestrator.env"],
                    )
                # granulator-0 as a Kubernetes pod runs: its token from a mounted file.
                token_file = folder / "granulator-0.token"
                token_file.write_text(files["granulator-0.env"]["BITWARE_WORKER_TOKEN"])
                token_file.chmod(0o600)
                running.granulator(
                    "granulator-0",
                    hosts["granulator"][0],
                    BITWARE_WORKER_ID="granulator-0",
                    BITWARE_WORKER_TOKEN_FILE=str(token_file),
                )
                for index in (1, 2):
                    running.granulator(
                        f"granulator-{index}",
                        hosts["granulator"][index],
                        **files[f"granulator-{index}.env"],
                    )
                running.start("gateway", "gateway", running.host(), **files["gateway.env"])
                yield running
            finally:
                codes = {name: s.stop() for name, s in reversed(running.served.items())}
        assert set(codes.values()) == {0}, codes  # every server stopped cleanly on SIGTERM


@dataclass
class Api:
    http: httpx.Client
    api_key: str
    admin: dict[str, str]

    @property
    def key(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    def run(self, topic: str) -> str:
        created = self.http.post(
            "/api/requests",
            json={"topic": topic, "master_template": "course_reviewed", "granularity": 1},
            headers=self.key,
        )
        assert created.status_code == 200, created.text
        request_id = created.json()["request"]["request_id"]
        executed = self.http.post(f"/api/requests/{request_id}/execute", headers=self.key)
        assert executed.status_code == 200, executed.text
        return str(executed.json()["execution_id"])

    def finished(self, execution_id: str, within: float = 120.0) -> dict[str, object]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            answer = self.http.get(f"/api/executions/{execution_id}", headers=self.key)
            assert answer.status_code == 200, answer.text
            execution: dict[str, object] = answer.json()["execution"]
            if execution["status"] not in {"EXECUTION_STATUS_QUEUED", "EXECUTION_STATUS_RUNNING"}:
                return execution
            time.sleep(0.2)
        raise AssertionError(f"{execution_id} did not finish within {within} s")

    def batch(self, label: str) -> Counter[str]:
        """Runs BATCH executions at once through the gateway; stages run per worker id."""
        with ThreadPoolExecutor(BATCH) as pool:
            ids = list(pool.map(self.run, [f"{label} {i}" for i in range(BATCH)]))
            executions = list(pool.map(self.finished, ids))
        ran: Counter[str] = Counter()
        for execution in executions:
            assert execution["status"] == "EXECUTION_STATUS_SUCCEEDED", execution
            structure = self.http.get(
                f"/api/jobs/{execution['job_id']}/structure", headers=self.key
            )
            assert structure.status_code == 200, structure.text
            assert structure.json()["elements"][0]["kind"] == "course"
            for stage in execution["stages"]:  # type: ignore[attr-defined]
                (attempt,) = [
                    a for a in stage["attempts"] if a["status"] == "ATTEMPT_STATUS_SUCCEEDED"
                ]
                ran[attempt["worker_id"]] += 1
        return ran


@pytest.fixture(scope="module")
def api(mesh: Mesh) -> Iterator[Api]:
    gateway = mesh.served["gateway"].address
    with httpx.Client(base_url=f"http://{gateway}", timeout=30) as http:
        admin = mesh.files["kam.env"]
        login = http.post(
            "/api/auth/login",
            json={
                "email": admin["BITWARE_BOOTSTRAP_ADMIN_EMAIL"],
                "password": admin["BITWARE_BOOTSTRAP_ADMIN_PASSWORD"],
            },
        )
        assert login.status_code == 200, login.text
        session = {"x-bitware-session-token": login.json()["session_token"]}
        client = http.post(
            "/api/clients",
            json={
                "company_name": "Many Hosts Ltd",
                "contact_email": "ops@hosts.test",
                "tier": "enterprise",
                "monthly_budget_usd": 1000,
            },
            headers=session,
        )
        assert client.status_code == 200, client.text
        key = http.post(
            f"/api/clients/{client.json()['client']['client_id']}/api-keys",
            json={"name": "multi-host"},
            headers=session,
        )
        assert key.status_code == 200, key.text
        yield Api(http, key.json()["key"], session)


def test_every_server_answers_its_health_check(mesh: Mesh) -> None:
    for name, served in mesh.served.items():
        http = ["--http"] if name == "gateway" else []
        checked = bitware("health", served.address, *http)
        assert checked.returncode == 0, (name, checked.stderr)
    assert len(mesh.served) == 8  # 2 KAM, 2 orchestrators, 3 granulators, the gateway


def test_executions_through_the_gateway_spread_over_the_granulators(api: Api) -> None:
    ran = api.batch("Distributed systems")
    assert sum(ran.values()) == 2 * BATCH
    assert set(ran) == {"granulator-0", "granulator-1", "granulator-2"}, ran


def test_a_granulator_on_another_host_joins_late_and_takes_work(mesh: Mesh, api: Api) -> None:
    admin = mesh.files["kam.env"]
    credential = minted(
        bitware(
            "credentials",
            "create-worker",
            "remote-1",
            "--kam",
            mesh.served["kam-1"].address,
            BITWARE_ADMIN_EMAIL=admin["BITWARE_BOOTSTRAP_ADMIN_EMAIL"],
            BITWARE_ADMIN_PASSWORD=admin["BITWARE_BOOTSTRAP_ADMIN_PASSWORD"],
        )
    )
    mesh.granulator("remote-1", mesh.host(), **credential)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = api.http.get("/api/workers", headers=api.admin)
        if workers.status_code == 200 and any(
            w["worker_id"] == "remote-1" and w["state"] == "WORKER_STATE_HEALTHY"
            for w in workers.json()["workers"]
        ):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"remote-1 never registered: {workers.text}")
    ran = api.batch("Late joiners")
    assert sum(ran.values()) == 2 * BATCH
    assert ran["remote-1"] >= 1, ran


def metric_total(served: Served, name: str, having: str = "") -> float:
    """The sum of the series of metric `name` on a server's /metrics whose labels contain
    `having`."""
    body = httpx.get(f"http://{served.metrics}/metrics", timeout=10).text
    series = re.findall(rf"^{name}(\{{[^}}]*\}})? (\S+)$", body, re.MULTILINE)
    return sum(float(value) for labels, value in series if having in labels)


def test_both_replicas_of_kam_and_of_the_orchestrator_took_part(mesh: Mesh, api: Api) -> None:
    """Behind one name each, both KAM replicas admitted executions the gateway sent, and both
    orchestrators dispatched stages from the one queue they share."""
    api.batch("Replicas")
    for name in ("kam-0", "kam-1"):
        executed = metric_total(mesh.served[name], "bitware_rpc_total", "ExecuteRequest")
        assert executed > 0, name
    for name in ("orchestrator-0", "orchestrator-1"):
        assert metric_total(mesh.served[name], "bitware_dispatch_seconds_count") > 0, name
