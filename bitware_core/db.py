"""Each service's own database through SQLAlchemy 2: SQLite files by default, PostgreSQL by URL.

Domain logic is plain synchronous code that takes a `Session`; `Database.run` executes it in one
transaction on a small thread pool so that the asyncio servers never block on the database.
SQLite gets a single writer thread (it allows one writer at a time anyway) in WAL mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import alembic.command
import alembic.config
from alembic import context as alembic_context
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from bitware_core.errors import Violations

T = TypeVar("T")


class Base(DeclarativeBase):
    """Base of every service's tables (each service keeps its own metadata via subclasses)."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id(prefix: str) -> str:
    """A short, time-ordered, unguessable id such as `req_18c1f2a3b4c_9f2e1d0c4b5a`."""
    return f"{prefix}_{int(time.time() * 1000):x}_{secrets.token_hex(6)}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """An engine plus the thread pool that runs units of work against it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="db"
        )

    def libpq_url(self) -> str:
        """The URL without SQLAlchemy's driver suffix, for a plain psycopg connection."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def migrate(self, service: str, script_location: str) -> None:
        """Brings the schema to the newest Alembic revision of `service` (each service keeps its
        own version table, so several services may share one PostgreSQL database)."""
        config = alembic.config.Config()
        config.set_main_option("script_location", script_location)
        config.set_main_option("version_table", f"alembic_version_{service}")
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            alembic.command.upgrade(config, "head")

    def run_sync(self, work: Callable[[Session], T]) -> T:
        with self._sessions.begin() as session:
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Runs `work(session)` in one transaction, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def run_migrations(metadata: MetaData) -> None:
    """The body of every service's Alembic `env.py`: online migrations on the connection that
    `Database.migrate` passes in (or a URL, for `alembic revision --autogenerate`)."""
    config = alembic_context.config
    version_table = config.get_main_option("version_table") or "alembic_version"
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
        connection = engine.connect()
    alembic_context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=True,  # SQLite can only alter tables by copying them
    )
    with alembic_context.begin_transaction():
        alembic_context.run_migrations()


DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_window(page_size: int, page_token: str) -> tuple[int, int]:
    """Validates paging input and returns (offset, limit)."""
    problems = Violations()
    problems.check(page_size >= 0, "page_size", "must not be negative")
    offset = 0
    if page_token:
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(page_token.encode()))["o"])
        except (ValueError, KeyError, TypeError):
            problems.add("page_token", "is not a token this server issued")
    problems.raise_if_any()
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    return offset, limit


def next_page_token(offset: int, limit: int, returned: int) -> str:
    """The token for the page after one that returned `returned` of `limit` rows (one extra row
    is fetched to know whether there is more)."""
    if returned <= limit:
        return ""
    return base64.urlsafe_b64encode(json.dumps({"o": offset + limit}).encode()).decode()
