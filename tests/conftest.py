"""Fixtures that start the real servers on free loopback ports with real SQLite files. The
helpers tests import (`Client`, `make_client`, `eventually`, …) are in tests/common.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bitware_core.config import KamSettings, QueueSettings, Settings
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from tests.common import PARKED_CAPABILITY, POSTGRES, Client, make_client, scratch_database
from tests.granulator.fake_openai import FakeOpenAI


def pytest_sessionfinish() -> None:
    POSTGRES.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with scratch_database("bitware_test") as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(
        tmp_path,
        Settings(
            queue=QueueSettings(heartbeat_interval=0.5),
            kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
        ),
    )
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A real local HTTP server speaking the OpenAI API, scripted by the test."""
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(mesh: InProcessMesh) -> Client:
    return await make_client(mesh)
