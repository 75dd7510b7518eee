"""Helpers the tests of every room import: the test client and its sign-in, submitting a request,
waiting for a condition, free ports, server processes and scratch PostgreSQL databases. Fixtures
stay in conftest.py, which pytest loads by itself and which nothing imports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import psycopg
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
from bitware_mesh.inprocess import InProcessMesh
from tests.postgres import PostgresFinder

#: A capability that KAM knows (BITWARE_EXTRA_CAPABILITIES) but no worker of the test mesh
#: offers: executions of a template that uses it wait in the queue for as long as a test needs.
PARKED_CAPABILITY = "parked"


#: The session's PostgreSQL (tests/postgres.py says where it comes from); tests create their own
#: database on it and drop it.
POSTGRES = PostgresFinder()


@dataclass
class Client:
    """A client with an API key, and the admin's session, on a running mesh."""

    mesh: InProcessMesh
    admin_session: str
    client_id: str
    api_key: str

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("x-bitware-session-token", self.admin_session),)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),)

    def worker(self, worker_id: str) -> tuple[tuple[str, str], ...]:
        token = self.mesh.credentials.tokens[worker_id]
        return (("authorization", f"Bearer {token}"), ("x-worker-id", worker_id))


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL, as a plain libpq URL; dropped after."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin_url = POSTGRES.admin_url()
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {admin_url} does not answer: {error}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield POSTGRES.database_url(name)
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


async def make_client(
    mesh: InProcessMesh,
    tier: int = common_pb2.TIER_STANDARD,
    budget: float = 100.0,
    channel_credentials: grpc.ChannelCredentials | None = None,
) -> Client:
    """Signs in as the admin and creates a client with an API key."""
    channel = (
        grpc.aio.secure_channel(mesh.kam.address, channel_credentials)
        if channel_credentials
        else grpc.aio.insecure_channel(mesh.kam.address)
    )
    async with channel:
        login = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(
                email=mesh.credentials.admin_email, password=mesh.credentials.admin_password
            ),
            timeout=10,
        )
        admin = (("x-bitware-session-token", login.session_token),)
        created = await accounts_pb2_grpc.ClientServiceStub(channel).CreateClient(
            accounts_pb2.CreateClientRequest(
                client=accounts_pb2.Client(
                    company_name="Acme Learning",
                    contact_email="ops@acme.test",
                    tier=tier,
                    monthly_budget_usd=budget,
                )
            ),
            metadata=admin,
            timeout=10,
        )
        key = await accounts_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(client_id=created.client.client_id, name="tests"),
            metadata=admin,
            timeout=10,
        )
    return Client(mesh, login.session_token, created.client.client_id, key.key)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now, for a test that must name a port before its server starts (to
    restart a server on the same port). Servers themselves bind port 0 and report it."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def start_server_process(service: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """Starts `python -m <service>_server` with `env` added, once it says it is ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"{service}_server",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    assert line.startswith(f"BITWARE_READY {service}".encode()), line
    return process


async def submit(
    kam: grpc.aio.Channel, client: Client, spec: common_pb2.ContentSpec
) -> tuple[str, str]:
    """Creates a request as the client's program and executes it: (request id, execution id)."""
    requests = requests_pb2_grpc.RequestServiceStub(kam)
    created = await requests.CreateRequest(
        requests_pb2.CreateRequestRequest(spec=spec), metadata=client.key, timeout=10
    )
    executed = await requests.ExecuteRequest(
        requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
        metadata=client.key,
        timeout=10,
    )
    return created.request.request_id, executed.execution_id


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Waits until `condition()` holds, failing the test after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in range(int(within / 0.02) + 1):
        if condition():
            return
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within}s")
