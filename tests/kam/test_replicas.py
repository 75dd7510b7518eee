"""Two KAM processes (`bitware serve kam`) on one PostgreSQL database behave as one KAM: a session
opened on one works and ends on the other, a credential revoked on one is refused by the other
once its short cache entry expires, failed sign-ins are counted across both, one client's budget
is not overspent by executions admitted on both at once; and an orchestrator
whose KAM address is `dns:///name:port` spreads its calls round robin over both replicas."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
)
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_mesh.inprocess import MeshCredentials
from kam_server.identity import CREDENTIAL_CACHE_SECONDS
from tests.cli.conftest import Served, random_loopback, serve
from tests.common import scratch_database
from tests.dns_server import DnsServer
from tests.metrics import value


@dataclass
class Replicas:
    kams: list[Served]
    orchestrator: Served
    credentials: MeshCredentials
    dns_target: str

    def login(self, kam: Served, password: str = "", email: str = "") -> str:
        with grpc.insecure_channel(kam.address) as channel:
            answer = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(
                    email=email or self.credentials.admin_email,
                    password=password or self.credentials.admin_password,
                ),
                timeout=10,
            )
        return str(answer.session_token)


def authenticate_calls(kam: Served) -> float:
    with urllib.request.urlopen(f"http://{kam.metrics}/metrics", timeout=10) as answer:
        body = answer.read().decode()
    method = "/bitware.kam.v1.AuthService/Authenticate"
    return value(body, "bitware_rpc_total", method=method, code="OK") if method in body else 0.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    folder: Path = tmp_path_factory.mktemp("replicas")
    credentials = MeshCredentials.generate(0)
    orchestrator_address = f"{random_loopback()}:50052"
    with scratch_database("bitware_kam_replicas") as url:
        database = url.replace("postgresql://", "postgresql+psycopg://", 1)
        kam_env = {
            "BITWARE_DATABASE_URL": database,
            "BITWARE_METRICS_ADDRESS": "127.0.0.1:0",
            "BITWARE_ORCHESTRATOR_ADDRESS": orchestrator_address,
            "BITWARE_WORKER_ID": "kam",
            "BITWARE_WORKER_TOKEN": credentials.tokens["kam"],
            "BITWARE_BOOTSTRAP_CREDENTIALS": credentials.bootstrap_list(),
            "BITWARE_BOOTSTRAP_ADMIN_EMAIL": credentials.admin_email,
            "BITWARE_BOOTSTRAP_ADMIN_PASSWORD": credentials.admin_password,
        }
        served: list[Served] = []
        try:
            first = serve("kam", folder, BITWARE_HOST=random_loopback(), **kam_env)
            served.append(first)
            port = int(first.address.rsplit(":", 1)[1])
            # The second replica on the same port of another address: one name, one port.
            served.append(
                serve(
                    "kam", folder, BITWARE_HOST=random_loopback(), BITWARE_PORT=str(port), **kam_env
                )
            )
            ips = [s.address.rsplit(":", 1)[0] for s in served]
            with DnsServer({"kam.test": ips}) as dns:
                target = dns.target("kam.test", port)
                host, orchestrator_port = orchestrator_address.rsplit(":", 1)
                orchestrator = serve(
                    "orchestrator",
                    folder,
                    BITWARE_HOST=host,
                    BITWARE_PORT=orchestrator_port,
                    BITWARE_DATA_DIR=str(folder / "orchestrator"),
                    BITWARE_KAM_ADDRESS=target,
                    # Ask KAM about every call, so that each call shows where it went.
                    BITWARE_AUTH_CACHE_SECONDS="0",
                    BITWARE_WORKER_ID="orchestrator",
                    BITWARE_WORKER_TOKEN=credentials.tokens["orchestrator"],
                )
                served.append(orchestrator)
                yield Replicas(served[:2], orchestrator, credentials, target)
        finally:
            for process in reversed(served):
                process.stop()


def test_an_orchestrator_reaches_both_kam_replicas_round_robin(replicas: Replicas) -> None:
    session = (("x-bitware-session-token", replicas.login(replicas.kams[0])),)
    before = [authenticate_calls(kam) for kam in replicas.kams]
    with grpc.insecure_channel(replicas.orchestrator.address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        for _ in range(20):
            stub.GetQueue(orchestrator_pb2.GetQueueRequest(), metadata=session, timeout=10)
    calls = [
        authenticate_calls(kam) - done for kam, done in zip(replicas.kams, before, strict=True)
    ]
    assert sum(calls) >= 20, calls
    # Round robin: each replica answers about half (a pick-first channel would give 20 and 0).
    assert min(calls) >= 5, calls


def test_a_session_opened_on_one_replica_works_and_ends_on_the_other(replicas: Replicas) -> None:
    first, second = replicas.kams
    session = (("x-bitware-session-token", replicas.login(first)),)
    with grpc.insecure_channel(second.address) as channel:
        clients = accounts_pb2_grpc.ClientServiceStub(channel)
        clients.ListClients(accounts_pb2.ListClientsRequest(), metadata=session, timeout=10)
        auth_pb2_grpc.AuthServiceStub(channel).Logout(
            auth_pb2.LogoutRequest(), metadata=session, timeout=10
        )
    with grpc.insecure_channel(first.address) as channel, pytest.raises(grpc.RpcError) as refused:
        accounts_pb2_grpc.ClientServiceStub(channel).ListClients(
            accounts_pb2.ListClientsRequest(), metadata=session, timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_credential_revoked_on_one_replica_is_refused_by_the_other(replicas: Replicas) -> None:
    first, second = replicas.kams
    admin = (("x-bitware-session-token", replicas.login(first)),)
    with grpc.insecure_channel(first.address) as channel:
        stub = accounts_pb2_grpc.WorkerCredentialServiceStub(channel)
        made = stub.CreateWorkerCredential(
            accounts_pb2.CreateWorkerCredentialRequest(worker_id="roaming-1"),
            metadata=admin,
            timeout=10,
        )
        worker = (("authorization", f"Bearer {made.token}"), ("x-worker-id", "roaming-1"))

        def whoami() -> grpc.StatusCode:
            with grpc.insecure_channel(second.address) as other:
                try:
                    auth_pb2_grpc.AuthServiceStub(other).Authenticate(
                        auth_pb2.AuthenticateRequest(), metadata=worker, timeout=10
                    )
                except grpc.RpcError as error:
                    return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        assert whoami() == grpc.StatusCode.OK  # now in the second replica's cache
        stub.RevokeWorkerCredential(
            accounts_pb2.RevokeWorkerCredentialRequest(worker_id="roaming-1"),
            metadata=admin,
            timeout=10,
        )
    # The second replica learns of it from the database once its short cache entry expires.
    deadline = time.monotonic() + CREDENTIAL_CACHE_SECONDS + 10
    while whoami() == grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "still accepted after the credential cache time"
        time.sleep(0.2)
    assert whoami() == grpc.StatusCode.UNAUTHENTICATED


def test_failed_sign_ins_are_counted_across_replicas(replicas: Replicas) -> None:
    email = "someone@replicas.test"
    codes = []
    for attempt in range(6):  # alternately: neither replica alone saw five failures
        kam = replicas.kams[attempt % 2]
        try:
            replicas.login(kam, password="wrong password", email=email)
        except grpc.RpcError as error:
            codes.append(error.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED]


def test_executions_admitted_on_both_replicas_cannot_overspend_the_budget(
    replicas: Replicas,
) -> None:
    first = replicas.kams[0]
    admin = (("x-bitware-session-token", replicas.login(first)),)
    with grpc.insecure_channel(first.address) as channel:
        client = accounts_pb2_grpc.ClientServiceStub(channel).CreateClient(
            accounts_pb2.CreateClientRequest(
                client=accounts_pb2.Client(
                    company_name="Two Replicas Ltd",
                    contact_email="ops@replicas.test",
                    tier=common_pb2.TIER_ENTERPRISE,
                    # course_standard reserves $0.05: this covers two executions, not six.
                    monthly_budget_usd=0.12,
                )
            ),
            metadata=admin,
            timeout=10,
        )
        key = accounts_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(client_id=client.client.client_id, name="replicas"),
            metadata=admin,
            timeout=10,
        )
        as_client = (("x-api-key", key.key),)
        requests = requests_pb2_grpc.RequestServiceStub(channel)
        ids = [
            requests.CreateRequest(
                requests_pb2.CreateRequestRequest(
                    spec=common_pb2.ContentSpec(
                        topic=f"Budget {index}",
                        granularity=1,
                        structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
                    )
                ),
                metadata=as_client,
                timeout=10,
            ).request.request_id
            for index in range(6)
        ]

    def execute(index: int) -> grpc.StatusCode:
        with grpc.insecure_channel(replicas.kams[index % 2].address) as channel:
            try:
                requests_pb2_grpc.RequestServiceStub(channel).ExecuteRequest(
                    requests_pb2.ExecuteRequestRequest(request_id=ids[index]),
                    metadata=as_client,
                    timeout=30,
                )
            except grpc.RpcError as error:
                return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(execute, range(6)))
    assert sorted(code.name for code in codes) == ["OK", "OK"] + ["RESOURCE_EXHAUSTED"] * 4
