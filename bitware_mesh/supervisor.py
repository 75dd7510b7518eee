"""`bitware up`: runs KAM, the orchestrator, granulators and the gateway as separate processes.

Every server binds its own port (the one asked for, or any free one for 0) and reports the bound
address on its ready line; the supervisor never reserves a port for a child, so no other process
can take it in between. All children start at once (their imports overlap) and wait for their
peers' addresses on stdin (`ServerSettings.stdin_settings`): KAM first, then the orchestrator with
KAM's address (KAM is then told the orchestrator's), then the granulators, then the gateway. A
restarted server binds the port it had, so its peers' addresses stay right. With `--local-model`
one more child serves a real model (`bitware_mesh.local_model`), and the granulators are
pointed at it.

Each server's stderr goes to `DATA/logs/<server>.log`, rotated by size. When a server dies the
supervisor says why (exit code or signal) and prints the last lines of its log; one that dies
before it was ever ready fails the start, with those lines; later it is restarted with backoff.
Fresh service tokens are generated on every start and handed to KAM as hashes only, and the
first admin's password is generated on the first start and shown once (on PostgreSQL: when the
database has no admin yet). Ctrl-C or SIGTERM stops them all (SIGTERM first, so each drains)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bitware_mesh import local_model
from bitware_mesh.inprocess import MeshCredentials

READY_PREFIX = "BITWARE_READY "
BOUND_PREFIX = "BITWARE_BOUND "
CONFIGURED_PREFIX = "BITWARE_CONFIGURED "
#: The child that serves the local model (`bitware up --local-model`).
LOCAL_MODEL = "local-model"
#: A server that stayed up this long before dying starts its backoff again from one second.
STABLE_AFTER = 60.0
#: Each server's log is rotated at this size, keeping this many older files (`kam.log.1`, …).
LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
#: How many of a dead server's last log lines are shown.
TAIL_LINES = 12
#: Settings that belong to one process: never passed on from the supervisor's environment.
PER_PROCESS = frozenset(
    {
        "BITWARE_PORT",
        "BITWARE_METRICS_ADDRESS",
        "BITWARE_ADVERTISE_ADDRESS",
        "BITWARE_WORKER_ID",
        "BITWARE_WORKER_TOKEN",
        "BITWARE_STDIN_SETTINGS",
    }
)


class ChildFailed(RuntimeError):
    """A server died before it was ever ready; the message says why, with its last log line."""

    def __init__(self, child: Child, reason: str) -> None:
        last = child.log.tail[-1] if child.log.tail else "(its log is empty)"
        super().__init__(f"{child.name} {reason} before it was ready: {last}")
        self.child = child
        self.last_line = last


def exit_reason(code: int) -> str:
    """Why a child ended, in words: `was killed by SIGKILL`, `exited with code 1`."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    if code == 0:
        return "exited on its own (code 0)"
    return f"exited with code {code}"


def postgres_url(url: str) -> str:
    """A PostgreSQL URL for SQLAlchemy with the psycopg 3 driver the services ship with."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url.removeprefix(scheme)
    return url


def has_admin(url: str) -> bool:
    """Whether KAM's database already has an admin (then no first password is made)."""
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("users"):
                return False
            query = text("SELECT count(*) FROM users WHERE role = 'admin'")
            return bool(connection.scalar(query))
    except SQLAlchemyError as error:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise RuntimeError(f"cannot use PostgreSQL at {shown}: {reason}") from None
    finally:
        engine.dispose()


def adopt_old_granulator_store(data_dir: Path) -> str:
    """Makes `DATA/granulator-1/granulator.db` the mesh's one job store `DATA/granulator.db`
    when that does not exist yet: before the granulators shared one store, each kept its own
    file there, and the first one's (the only one with the default single granulator) holds
    the jobs and templates a user has. Returns what it did, in words, or "" when nothing."""
    shared, old = data_dir / "granulator.db", data_dir / "granulator-1" / "granulator.db"
    if shared.exists() or not old.exists():
        return ""
    for suffix in ("", "-wal", "-shm"):  # no process has them open: the mesh is not up yet
        source = old.with_name(old.name + suffix)
        if source.exists():
            source.rename(shared.with_name(shared.name + suffix))
    others = sorted(str(p.relative_to(data_dir)) for p in data_dir.glob("granulator-*/*.db"))
    left = f"; not carried over: {', '.join(others)}" if others else ""
    return (
        f"moved granulator-1/granulator.db to granulator.db, the granulators' one job store{left}"
    )


class ChildLog:
    """One server's output: copied into its log file (rotated by size), the lines since its
    latest start kept for the report when it dies."""

    def __init__(self, path: Path, max_bytes: int = LOG_BYTES, backups: int = LOG_BACKUPS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def write(self, line: str) -> None:
        self.tail.append(line)
        self._file.emit(logging.makeLogRecord({"msg": line}))

    def started(self, pid: int) -> None:
        self.tail.clear()
        self._file.emit(logging.makeLogRecord({"msg": f"--- bitware up started pid {pid}"}))

    def close(self) -> None:
        self._file.close()


@dataclass
class Child:
    name: str
    module: str
    #: Its environment on top of the supervisor's (per-process settings removed); peers'
    #: addresses are added as they become known, so a restart gets them directly.
    env: dict[str, str]
    log: ChildLog
    #: Where it listens and serves /metrics, from its ready line.
    address: str = ""
    metrics_address: str = ""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    #: Its address is known (`BITWARE_BOUND`, before its start-up work, or the ready line).
    bound: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the current process has ended (with `exit_code`).
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int = 0
    configured: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class MeshPlan:
    data_dir: Path
    host: str = "127.0.0.1"
    kam_port: int = 50051
    orchestrator_port: int = 50052
    granulator_port: int = 50053
    gateway_port: int = 8080
    granulators: int = 1
    postgres_url: str = ""
    log_json: bool = False
    #: Every gRPC server serves /metrics on a port of its own (the gateway on its HTTP port).
    metrics: bool = False
    #: Also run llama.cpp's server with SmolLM2 (`bitware_mesh.local_model`) on a free port, and
    #: point the granulators at it.
    local_model: bool = False


@dataclass
class RunningMesh:
    children: list[Child]
    admin_email: str
    admin_password: str  # empty unless this start created the admin

    def address(self, name: str) -> str:
        return next(c.address for c in self.children if c.name == name)


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in PER_PROCESS}


class Supervisor:
    def __init__(self, plan: MeshPlan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.children: list[Child] = []
        self.started = False
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def _child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def _prepare(self) -> tuple[str, str]:
        """The children and their own settings; (admin email, password if this is a first
        start)."""
        plan = self.plan
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        if plan.postgres_url:
            plan.postgres_url = postgres_url(plan.postgres_url)
            first_start = not has_admin(plan.postgres_url)
        else:
            first_start = not (plan.data_dir / "kam.db").exists()
            if moved := adopt_old_granulator_store(plan.data_dir):
                self.say(moved)
        if os.environ.get("BITWARE_METRICS_ADDRESS"):
            self.say(
                "note: BITWARE_METRICS_ADDRESS is a setting of one server and is not passed on; "
                "`bitware up --metrics` gives each server a metrics port of its own"
            )
        credentials = MeshCredentials.generate(plan.granulators)
        ports = {
            "kam": plan.kam_port,
            "orchestrator": plan.orchestrator_port,
            **{
                f"granulator-{i + 1}": plan.granulator_port + i if plan.granulator_port else 0
                for i in range(plan.granulators)
            },
            "gateway": plan.gateway_port,
        }
        modules = {"kam": "kam_server", "orchestrator": "orchestrator_server", "gateway": "gateway"}
        admin_password = credentials.admin_password if first_start else ""
        for name, port in ports.items():
            env = {
                "BITWARE_HOST": plan.host,
                "BITWARE_PORT": str(port),
                "BITWARE_DATA_DIR": str(plan.data_dir),
                "BITWARE_WORKER_ID": name,
                "BITWARE_WORKER_TOKEN": credentials.tokens[name],
                "BITWARE_LOG_JSON": "1" if plan.log_json else "0",
            }
            if plan.postgres_url and name != "gateway":
                env["BITWARE_DATABASE_URL"] = plan.postgres_url
            if plan.metrics and name != "gateway":  # the gateway serves /metrics itself
                env["BITWARE_METRICS_ADDRESS"] = f"{plan.host}:0"
            if name == "kam":
                env["BITWARE_BOOTSTRAP_CREDENTIALS"] = credentials.bootstrap_list()
                env["BITWARE_BOOTSTRAP_ADMIN_EMAIL"] = credentials.admin_email
                if admin_password:
                    env["BITWARE_BOOTSTRAP_ADMIN_PASSWORD"] = admin_password
            module = modules.get(name, "granulator_server")
            log = ChildLog(plan.data_dir / "logs" / f"{name}.log")
            self.children.append(Child(name, module, env, log))
        if plan.local_model:
            env = {"BITWARE_HOST": "127.0.0.1", "BITWARE_PORT": "0"}
            log = ChildLog(plan.data_dir / "logs" / f"{LOCAL_MODEL}.log")
            self.children.append(Child(LOCAL_MODEL, "bitware_mesh.local_model", env, log))
        return credentials.admin_email, admin_password

    async def start(self, ready_within: float = 30.0) -> RunningMesh:
        admin_email, admin_password = self._prepare()
        started = time.monotonic()
        try:
            async with asyncio.timeout(ready_within):
                for child in self.children:  # all at once: their imports overlap
                    await self._spawn(child, wait_for_peers=True)
                await self._configure_in_order()
        except TimeoutError:
            late = [c.name for c in self.children if not c.ready.is_set()]
            await self.stop()
            raise RuntimeError(f"not ready after {ready_within:.0f}s: {', '.join(late)}") from None
        except BaseException:
            await self.stop()
            raise
        self.started = True
        self._write_mesh_file(admin_email)
        self.say(f"all servers healthy in {time.monotonic() - started:.1f}s")
        return RunningMesh(self.children, admin_email, admin_password)

    async def _configure_in_order(self) -> None:
        """Each server gets its peers' addresses as soon as they are bound; a gRPC server binds
        before its start-up work (migrations, seeding), so that work overlaps across servers."""
        kam, orchestrator = self._child("kam"), self._child("orchestrator")
        granulators = [c for c in self.children if c.name.startswith("granulator")]
        gateway = self._child("gateway")
        await self._configure(kam, {})
        await self._configure(orchestrator, {"BITWARE_KAM_ADDRESS": kam.address})
        telling = asyncio.create_task(
            self._tell(kam, "BITWARE_ORCHESTRATOR_ADDRESS", orchestrator.address)
        )
        try:
            peers = {
                "BITWARE_KAM_ADDRESS": kam.address,
                "BITWARE_ORCHESTRATOR_ADDRESS": orchestrator.address,
            }
            model = {}
            if self.plan.local_model:
                local = self._child(LOCAL_MODEL)
                await self._configure(local, {})
                model = local_model.granulator_settings(local.address)
            await asyncio.gather(*(self._configure(g, {**peers, **model}) for g in granulators))
            # The gateway reads jobs from any granulator (they share one job store).
            every = ",".join(g.address for g in granulators)
            await self._configure(gateway, {**peers, "BITWARE_GRANULATOR_ADDRESS": every})
            await telling
            for child in self.children:
                await self._until(child, child.ready)
        finally:
            telling.cancel()

    async def _configure(self, child: Child, values: dict[str, str]) -> None:
        """Hands a waiting child its remaining settings and waits until its address is known."""
        child.env.update(values)
        lines = "".join(f"{name}={value}\n" for name, value in values.items())
        await self._send(child, f"{lines}\n")
        await self._until(child, child.bound)
        # A restart binds the same port again, so that its peers' addresses stay right.
        child.env["BITWARE_PORT"] = child.address.rsplit(":", 1)[1]

    async def _tell(self, child: Child, name: str, value: str) -> None:
        """Changes a setting of a running child (see `ServerSettings.stdin_settings`)."""
        child.env[name] = value
        await self._send(child, f"{name}={value}\n")
        await self._until(child, child.configured)

    @staticmethod
    async def _send(child: Child, text: str) -> None:
        assert child.process is not None and child.process.stdin is not None
        try:
            child.process.stdin.write(text.encode())
            await child.process.stdin.drain()
        except ConnectionError:  # it has died: `_until` reports why
            pass

    async def _until(self, child: Child, event: asyncio.Event) -> None:
        """Waits for `event`, failing the start with its log's last lines if the child dies."""
        ended = asyncio.create_task(child.ended.wait())
        happened = asyncio.create_task(event.wait())
        try:
            await asyncio.wait({ended, happened}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            happened.cancel()
        if not event.is_set():
            raise ChildFailed(child, exit_reason(child.exit_code))

    async def _spawn(self, child: Child, wait_for_peers: bool = False) -> None:
        child.bound.clear()
        child.ready.clear()
        child.ended.clear()
        child.configured.clear()
        child.started_at = time.monotonic()
        env = {**_inherited(), **child.env}
        if wait_for_peers:
            env["BITWARE_STDIN_SETTINGS"] = "1"
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.module,
            env=env,
            stdin=asyncio.subprocess.PIPE if wait_for_peers else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Ctrl-C reaches only the supervisor, which stops the children in order.
            start_new_session=True,
            limit=1024 * 1024,  # one log line may be long (a traceback in a JSON line)
        )
        child.log.started(child.process.pid)
        self._tasks.append(asyncio.create_task(self._watch(child, child.process)))

    async def _copy_log(self, child: Child, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            child.log.write(raw.decode(errors="replace").rstrip("\n"))

    async def _watch(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None and process.stderr is not None
        copying = asyncio.create_task(self._copy_log(child, process.stderr))
        async for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(BOUND_PREFIX) and not child.bound.is_set():
                child.address = line.split()[2]
                child.bound.set()
            elif line.startswith(READY_PREFIX) and not child.ready.is_set():
                _, _, child.address, *extra = line.split()
                metrics = [e.removeprefix("metrics=") for e in extra if e.startswith("metrics=")]
                child.metrics_address = metrics[0] if metrics else ""
                if "BITWARE_METRICS_ADDRESS" in child.env:  # a restart serves on the same port
                    child.env["BITWARE_METRICS_ADDRESS"] = child.metrics_address
                child.bound.set()
                child.ready.set()
                if child.restarts:
                    self.say(f"{child.name} is back at {child.address} (pid {process.pid})")
            elif line.startswith(CONFIGURED_PREFIX):
                child.configured.set()
            elif line:
                child.log.write(line)
        child.exit_code = await process.wait()
        await copying
        child.ended.set()
        if self.stopping:
            return
        if not self.started:  # the start fails, with these lines (see `_until`)
            self._say_tail(
                child, f"{child.name} (pid {process.pid}) {exit_reason(child.exit_code)}"
            )
            return
        if time.monotonic() - child.started_at >= STABLE_AFTER:
            child.restarts = 0
        child.restarts += 1
        delay = min(30.0, 2.0 ** (child.restarts - 1))
        self._say_tail(
            child,
            f"{child.name} (pid {process.pid}) {exit_reason(child.exit_code)}; restarting in "
            f"{delay:.0f}s (restart {child.restarts})",
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(child)

    def _say_tail(self, child: Child, headline: str) -> None:
        self.say(headline)
        if not child.log.tail:
            self.say(f"  (nothing in {child.log.path} since it started)")
            return
        self.say(f"  last lines of {child.log.path}:")
        for line in child.log.tail:
            self.say(f"  | {line}")

    def _write_mesh_file(self, admin_email: str) -> None:
        """DATA/mesh.json: where each server listens (never a secret), for the other commands."""
        content = {
            "pid": os.getpid(),
            "addresses": {c.name: c.address for c in self.children},
            "metrics": {c.name: c.metrics_address for c in self.children if c.metrics_address},
            "admin_email": admin_email,
        }
        (self.plan.data_dir / "mesh.json").write_text(json.dumps(content, indent=2))

    async def stop(self, grace: float = 10.0) -> None:
        self.stopping = True
        for child in reversed(self.children):
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signal.SIGTERM)
        for child in self.children:
            if child.process is None:
                continue
            try:
                await asyncio.wait_for(child.process.wait(), grace)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for child in self.children:
            child.log.close()
