"""Each service's own database through SQLAlchemy 2: SQLite files by default, PostgreSQL by URL.

Domain logic is plain synchronous code that takes a `Session`; `Database.run` executes it in one
transaction on a small thread pool so that the asyncio servers never block on the database.
SQLite gets a single writer thread (it allows one writer at a time anyway) in WAL mode;
several processes may share one file (the granulators of `bitware up` do): WAL lets readers
run beside the writer, and the busy timeout makes writers take turns instead of failing.

Two ways in, by path, not by module:

- `Database.run_tx(work)`: `work(tx)` on a `bitware_core.sql.Tx`, hand-written SQL on the
  driver's own connection, for what every execution passes through (in the orchestrator the
  claim, accept, progress, result, event log and housekeeping; in KAM the template read and
  creating, executing, retrying and settling a request; in the granulator the Handshake and a
  stage's job). The ORM costs 2–3.5 ms per small transaction there; sqlite3 needs 0.08 ms.
- `Database.run(work)`: `work(session)` on a SQLAlchemy session, for everything else (reads and
  lists for people, administration, registration, start-up), where clarity beats a millisecond.

A unit of work is one or the other; where a session's work needs a function written for a `Tx`,
`Tx.of(session)` gives the session's own transaction.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import re
import secrets
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Column,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    create_engine,
    event,
    exc,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from bitware_core.errors import Violations
from bitware_core.sql import Info, Tx

T = TypeVar("T")


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


#: A pooled PostgreSQL connection idle longer than this is checked with `SELECT 1` before use.
IDLE_PING_SECONDS = 10.0
#: PostgreSQL connections are replaced after this long (before any server or proxy idle cut).
POOL_RECYCLE_SECONDS = 1800


def _mark_idle(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pessimistic disconnect check, but only for a connection that sat idle in the pool: one
    that was in use a moment ago is alive, so a busy server pays no extra round trip. A dead
    connection raises DisconnectionError and the pool retries with a fresh one."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()
    except Exception as error:
        raise exc.DisconnectionError(f"pooled connection is gone: {error}") from error


_REVISION = re.compile(r"^revision(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def _script_head(script_location: str) -> str | None:
    """The single head revision of a service's migrations, read from the revision files
    without importing Alembic; None when that is not clear-cut (then Alembic decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (Path(script_location) / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            return None
        revisions.add(revision.group(1))
        parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


C = TypeVar("C")


class PerEngine(Generic[C]):
    """One `C` per database engine, made on first use: a cache of a database's rows belongs to
    that database (tests run several servers, each with its own, in one process)."""

    def __init__(self, make: Callable[[], C]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Engine, C] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, engine: Engine) -> C:
        with self._lock:
            found = self._made.get(engine)
            if found is None:
                found = self._made[engine] = self._make()
            return found


class Database:
    """An engine plus the thread pool that runs units of work against it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # No pool_pre_ping: it costs a round trip on every checkout, i.e. every transaction.
            # Connections are recycled after POOL_RECYCLE_SECONDS, pinged only after sitting
            # idle (`_ping_if_idle`), and a disconnect met mid-use invalidates the whole pool,
            # so the next transaction reconnects.
            self.engine = create_engine(
                url, pool_size=10, max_overflow=10, pool_recycle=POOL_RECYCLE_SECONDS
            )
            event.listen(self.engine, "checkin", _mark_idle)
            event.listen(self.engine, "checkout", _ping_if_idle)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 8, thread_name_prefix="db"
        )
        self._tx_committed: list[Callable[[Info], None]] = []

    def libpq_url(self) -> str:
        """The URL without SQLAlchemy's driver suffix, for a plain psycopg connection."""
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Runs start-up work (migrations, seeding) one process at a time when several share a
        database (granulators starting together would both create the tables and seed): a
        PostgreSQL advisory lock, or on SQLite an exclusive lock on the file `<database>.lock`
        beside the database file (SQLite's own locks last one transaction only)."""
        if self.is_sqlite:
            path = self.engine.url.database
            if not path or path == ":memory:":
                yield
                return
            with open(f"{path}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            return
        key = zlib.crc32(name.encode())
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()

    def migrate(self, service: str, script_location: str, metadata: MetaData) -> None:
        """Brings the schema to the newest Alembic revision of `service` (each service keeps its
        own version table, so several services may share one PostgreSQL database).

        Alembic (~0.3 s of start-up to import and run) runs only when there is something to
        upgrade: a database already at the head is left alone, and one that has none of the
        service's tables yet gets them straight from `metadata` and is stamped at the head, as
        Alembic's own documentation suggests for new databases. `tests/e2e/test_migrations.py`
        checks that the models and the migrations describe the same schema."""
        head = _script_head(script_location)
        table = f"alembic_version_{service}"
        with self.engine.begin() as connection:
            present = set(inspect(connection).get_table_names())
            if head is not None and table in present:
                stored = connection.execute(text(f"SELECT version_num FROM {table}")).scalars()
                if list(stored) == [head]:
                    return
            if head is not None and not present & ({table} | set(metadata.tables)):
                metadata.create_all(connection)
                version = Table(
                    table,
                    MetaData(),
                    Column("version_num", String(32), nullable=False),
                    PrimaryKeyConstraint("version_num", name=f"{table}_pkc"),
                )
                version.create(connection)
                connection.execute(version.insert().values(version_num=head))
                return
        import alembic.command
        import alembic.config

        config = alembic.config.Config()
        config.set_main_option("script_location", script_location)
        config.set_main_option("version_table", table)
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            alembic.command.upgrade(config, "head")

    def on_commit(self, callback: Callable[[Info], None]) -> None:
        """Calls `callback(info)` on the database thread after each transaction commits, with
        the `info` of its session or `Tx`."""
        event.listen(self._sessions, "after_commit", lambda session: callback(session.info))
        self._tx_committed.append(callback)

    def run_sync(self, work: Callable[[Session], T]) -> T:
        with self._sessions.begin() as session:
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Runs `work(session)` in one transaction, off the event loop (off the per-execution
        path; see the module docstring)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, work)

    def run_tx_sync(self, work: Callable[[Tx], T]) -> T:
        pooled = self.engine.raw_connection()
        try:
            tx = Tx(pooled.driver_connection, not self.is_sqlite)
            result = work(tx)
            pooled.commit()
        except BaseException:
            pooled.rollback()
            raise
        finally:
            pooled.close()
        for callback in self._tx_committed:
            callback(tx.info)
        return result

    async def run_tx(self, work: Callable[[Tx], T]) -> T:
        """Runs `work(tx)` in one transaction of hand-written SQL, off the event loop (the
        per-execution path; see the module docstring)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_tx_sync, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def run_migrations(metadata: MetaData) -> None:
    """The body of every service's Alembic `env.py`: online migrations on the connection that
    `Database.migrate` passes in (or a URL, for `alembic revision --autogenerate`)."""
    from alembic import context as alembic_context

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
