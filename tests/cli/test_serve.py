"""`bitware serve` per server and `bitware credentials`, as a deployment would use them: every
server a real process of its own on its own loopback address, configured only by environment;
KAM's first admin from the environment; the orchestrator's, the gateway's and a remote
granulator's credentials minted with the CLI; a request run end to end on the granulator that
joined with its minted credential; rotate and revoke; SIGTERM stops each server cleanly."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_core.auth import hash_secret, new_secret
from tests.cli.conftest import Served, bitware, minted, one_line_error, random_loopback, serve

ADMIN_EMAIL = "ops@bitware.test"


@dataclass
class Deployment:
    folder: Path
    admin_password: str
    servers: dict[str, Served]

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """A `bitware` command against this deployment, as its admin."""
        kam = self.servers["kam"].address
        env.setdefault("BITWARE_ADMIN_PASSWORD", self.admin_password)
        return bitware(*args, "--kam", kam, BITWARE_ADMIN_EMAIL=ADMIN_EMAIL, **env)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("served")
    password = new_secret("pw_")
    # KAM's own credential can only be installed by hash: nothing can mint it before KAM runs.
    made = bitware("credentials", "bootstrap", "kam")
    assert made.returncode == 0, made.stderr
    kam_credential = dict(line.split("=", 1) for line in made.stdout.splitlines())
    token = kam_credential["BITWARE_WORKER_TOKEN"]
    assert kam_credential["BITWARE_BOOTSTRAP_CREDENTIALS"] == f"kam:service:{hash_secret(token)}"
    # The orchestrator's address is fixed before it starts (KAM is told it, as a deployment
    # would name it); the others bind port 0 and report the port on their ready line.
    orchestrator_address = f"{random_loopback()}:50052"
    deployment = Deployment(folder, password, {})
    servers = deployment.servers
    try:
        servers["kam"] = serve(
            "kam",
            folder,
            BITWARE_HOST=random_loopback(),
            BITWARE_DATA_DIR=str(folder / "kam"),
            BITWARE_METRICS_ADDRESS="127.0.0.1:0",
            BITWARE_ORCHESTRATOR_ADDRESS=orchestrator_address,
            **kam_credential,
            BITWARE_BOOTSTRAP_ADMIN_EMAIL=ADMIN_EMAIL,
            BITWARE_BOOTSTRAP_ADMIN_PASSWORD=password,
        )
        kam = servers["kam"].address
        orchestrator = minted(deployment.cli("credentials", "create-service", "orchestrator"))
        host, port = orchestrator_address.rsplit(":", 1)
        servers["orchestrator"] = serve(
            "orchestrator",
            folder,
            BITWARE_HOST=host,
            BITWARE_PORT=port,
            BITWARE_DATA_DIR=str(folder / "orchestrator"),
            BITWARE_METRICS_ADDRESS=f"{host}:0",
            BITWARE_KAM_ADDRESS=kam,
            BITWARE_HEARTBEAT_INTERVAL="0.5",
            **orchestrator,
        )
        worker = minted(deployment.cli("credentials", "create-worker", "gpu-1"))
        granulator_host = random_loopback()
        servers["granulator"] = serve(
            "granulator",
            folder,
            BITWARE_HOST=granulator_host,
            BITWARE_DATA_DIR=str(folder / "gpu-1"),
            BITWARE_METRICS_ADDRESS=f"{granulator_host}:0",
            BITWARE_KAM_ADDRESS=kam,
            BITWARE_ORCHESTRATOR_ADDRESS=orchestrator_address,
            **worker,
        )
        gateway = minted(deployment.cli("credentials", "create-service", "gateway"))
        servers["gateway"] = serve(
            "gateway",
            folder,
            BITWARE_HOST=random_loopback(),
            BITWARE_KAM_ADDRESS=kam,
            BITWARE_ORCHESTRATOR_ADDRESS=orchestrator_address,
            BITWARE_GRANULATOR_ADDRESS=servers["granulator"].address,
            **gateway,
        )
        yield deployment
    finally:
        for served in reversed(list(servers.values())):
            served.stop()


def test_each_served_server_is_healthy_and_serves_its_own_metrics(
    deployment: Deployment,
) -> None:
    servers = deployment.servers
    status = bitware(
        "status",
        "--kam",
        servers["kam"].address,
        "--orchestrator",
        servers["orchestrator"].address,
        "--granulator",
        servers["granulator"].address,
        "--gateway",
        servers["gateway"].address,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("serving") == 4, status.stdout
    metrics = {name: s.metrics for name, s in servers.items()}
    assert all(metrics.values()), metrics
    assert len(set(metrics.values()) - {servers["gateway"].address}) == 3, metrics
    for name, address in metrics.items():
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
            body = answer.read().decode()
        assert answer.status == 200
        assert (
            "bitware_rpc_total" if name != "gateway" else "bitware_gateway_requests_total"
        ) in body, name


def test_a_granulator_joins_with_a_minted_credential_and_runs_a_request(
    deployment: Deployment,
) -> None:
    servers = deployment.servers
    orchestrator = ("--orchestrator", servers["orchestrator"].address)
    for _ in range(120):  # it registers just after its ready line
        workers = deployment.cli("workers", *orchestrator, "--json")
        assert workers.returncode == 0, workers.stderr
        if any(w["worker_id"] == "gpu-1" for w in json.loads(workers.stdout)["workers"]):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"gpu-1 never registered: {workers.stdout}")

    gateway = f"http://{servers['gateway'].address}"
    with httpx.Client(base_url=gateway, timeout=10) as http:
        login = http.post(
            "/api/auth/login", json={"email": ADMIN_EMAIL, "password": deployment.admin_password}
        )
        login.raise_for_status()
        client = http.post(
            "/api/clients",
            json={
                "company_name": "Remote Learning",
                "contact_email": "ops@remote.test",
                "tier": "standard",
                "monthly_budget_usd": 10,
            },
        )
        client.raise_for_status()
        client_id = client.json()["client"]["client_id"]
        key = http.post(f"/api/clients/{client_id}/api-keys", json={"name": "serve test"})
        key.raise_for_status()
    result = deployment.cli(
        "run",
        *orchestrator,
        "--granulator",
        servers["granulator"].address,
        "--topic",
        "Deployment",
        "--json",
        BITWARE_API_KEY=key.json()["key"],
        BITWARE_ADMIN_PASSWORD="",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["execution"]["status"] == "EXECUTION_STATUS_SUCCEEDED"
    workers = {a["worker_id"] for s in document["execution"]["stages"] for a in s["attempts"]}
    assert workers == {"gpu-1"}
    assert document["structure"]["elements"]


def whoami(kam: str, worker_id: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(kam) as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(),
                metadata=(("authorization", f"Bearer {token}"), ("x-worker-id", worker_id)),
                timeout=10,
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_credentials_rotate_and_revoke(deployment: Deployment) -> None:
    kam = deployment.servers["kam"].address
    first = minted(deployment.cli("credentials", "create-worker", "spare-1"))[
        "BITWARE_WORKER_TOKEN"
    ]
    assert whoami(kam, "spare-1", first) == grpc.StatusCode.OK

    rotated = minted(deployment.cli("credentials", "rotate", "spare-1"))["BITWARE_WORKER_TOKEN"]
    assert rotated != first
    assert whoami(kam, "spare-1", first) == grpc.StatusCode.UNAUTHENTICATED
    assert whoami(kam, "spare-1", rotated) == grpc.StatusCode.OK

    revoked = deployment.cli("credentials", "revoke", "spare-1")
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith("revoked spare-1")
    assert whoami(kam, "spare-1", rotated) == grpc.StatusCode.UNAUTHENTICATED

    listed = deployment.cli("credentials", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    kinds = {
        c["worker_id"]: (c["kind"], c["revoked"]) for c in json.loads(listed.stdout)["credentials"]
    }
    assert kinds["spare-1"] == ("PRINCIPAL_KIND_WORKER", True)
    assert kinds["gpu-1"] == ("PRINCIPAL_KIND_WORKER", False)
    assert kinds["orchestrator"] == ("PRINCIPAL_KIND_SERVICE", False)


def test_credentials_errors_are_one_line(deployment: Deployment) -> None:
    line = one_line_error(deployment.cli("credentials", "create-worker", "gpu-1"))
    assert line.startswith("bitware: ALREADY_EXISTS: worker credential 'gpu-1' already exists")
    line = one_line_error(deployment.cli("credentials", "create-worker", "Not A Name"))
    assert line.startswith("bitware: INVALID_ARGUMENT:")
    line = one_line_error(deployment.cli("credentials", "rotate", "nobody"))
    assert line.startswith("bitware: NOT_FOUND:")
    line = one_line_error(
        deployment.cli("credentials", "create-worker", "gpu-2", BITWARE_ADMIN_PASSWORD="")
    )
    assert "set BITWARE_ADMIN_PASSWORD" in line
    line = one_line_error(
        deployment.cli("credentials", "revoke", "gpu-1", BITWARE_ADMIN_PASSWORD="wrong")
    )
    assert line.startswith(f"bitware: sign-in as {ADMIN_EMAIL} refused")


def test_a_bad_setting_or_a_taken_address_is_one_line_and_exit_2(
    deployment: Deployment,
) -> None:
    result = bitware("serve", "kam", BITWARE_PORT="fifty")
    assert result.returncode == 2
    assert result.stderr.strip() == "kam: BITWARE_PORT='fifty' is not accepted: use a whole number"
    host, port = deployment.servers["orchestrator"].address.rsplit(":", 1)
    result = bitware(
        "serve",
        "granulator",
        BITWARE_HOST=host,
        BITWARE_PORT=port,
        BITWARE_DATA_DIR=str(deployment.folder / "taken"),
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"granulator: cannot listen on {host}:{port}")
    )


def test_sigterm_stops_each_served_server_gracefully(deployment: Deployment) -> None:
    for name in ("gateway", "granulator", "orchestrator", "kam"):
        served = deployment.servers.pop(name)
        assert served.stop() == 0, served.log.read_text()
        assert "shutting down" in served.log.read_text() or name == "gateway"
