"""The suite's own PostgreSQL fallback: with no URL configured and nothing answering where the
machine's server would be, the tests get a throwaway server and nothing of it outlives them."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.postgres import PostgresFinder


def closed_port() -> str:
    """A loopback address on which nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_without_a_server_the_tests_start_and_remove_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BITWARE_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setenv("BITWARE_TEST_POSTGRES_PROBE", closed_port())
    finder = PostgresFinder()
    try:
        admin_url = finder.admin_url()
        assert finder.embedded is not None
        folder = finder.embedded.folder
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute("CREATE DATABASE fallback_check")
        with psycopg.connect(finder.database_url("fallback_check"), connect_timeout=10) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("fallback_check",)
    finally:
        finder.close()
    assert not folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(admin_url, connect_timeout=3)


def test_a_configured_url_wins_over_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITWARE_TEST_POSTGRES_URL", "postgresql://u@db.invalid:5433/maint")
    monkeypatch.setenv("BITWARE_TEST_POSTGRES_PROBE", closed_port())
    finder = PostgresFinder()
    assert finder.database_url("t1") == "postgresql://u@db.invalid:5433/t1"
    assert finder.embedded is None
