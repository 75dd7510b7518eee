"""`bitware up`: runs KAM, the orchestrator, granulators and the gateway as separate processes.

Ports are chosen up front (a taken port is refused with a clear message), fresh service tokens
are generated on every start and handed to KAM as hashes only, and the first admin's password is
generated on the first start and shown once (on PostgreSQL: when the database has no admin yet).
A server that dies is restarted with backoff, saying why it died and when it is back; Ctrl-C or
SIGTERM stops them all (SIGTERM first, so each drains gracefully)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bitware_core.mesh import MeshCredentials

READY_PREFIX = "BITWARE_READY"
#: A server that stayed up this long before dying starts its backoff again from one second.
STABLE_AFTER = 60.0


class PortTaken(Exception):
    pass


def reserve_port(host: str, port: int) -> int:
    """Checks that `port` is free (or picks a free one for 0) and returns it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortTaken(f"port {port} on {host} is already in use ({error.strerror})") from None
        return int(probe.getsockname()[1])


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


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    address: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


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


@dataclass
class RunningMesh:
    children: list[Child]
    admin_email: str
    admin_password: str  # empty unless this start created the admin

    def address(self, name: str) -> str:
        return next(c.address for c in self.children if c.name == name)


class Supervisor:
    def __init__(self, plan: MeshPlan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.children: list[Child] = []
        self.stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def _prepare(self) -> RunningMesh:
        plan = self.plan
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        if plan.postgres_url:
            plan.postgres_url = postgres_url(plan.postgres_url)
            first_start = not has_admin(plan.postgres_url)
        else:
            first_start = not (plan.data_dir / "kam.db").exists()
            if moved := adopt_old_granulator_store(plan.data_dir):
                self.say(moved)
        credentials = MeshCredentials.generate(plan.granulators)
        ports = {
            "kam": reserve_port(plan.host, plan.kam_port),
            "orchestrator": reserve_port(plan.host, plan.orchestrator_port),
            "gateway": reserve_port(plan.host, plan.gateway_port),
        }
        for index in range(plan.granulators):
            base = plan.granulator_port + index if plan.granulator_port else 0
            ports[f"granulator-{index + 1}"] = reserve_port(plan.host, base)
        address = {name: f"{plan.host}:{port}" for name, port in ports.items()}
        common = {
            "BITWARE_HOST": plan.host,
            "BITWARE_KAM_ADDRESS": address["kam"],
            "BITWARE_ORCHESTRATOR_ADDRESS": address["orchestrator"],
            # The gateway reads jobs from any granulator (they share one job store).
            "BITWARE_GRANULATOR_ADDRESS": ",".join(
                a for name, a in address.items() if name.startswith("granulator")
            ),
            "BITWARE_LOG_JSON": "1" if plan.log_json else "0",
        }

        def env(name: str, data_dir: Path, db: str = "") -> dict[str, str]:
            values = {
                **common,
                "BITWARE_PORT": str(ports[name]),
                "BITWARE_DATA_DIR": str(data_dir),
                "BITWARE_WORKER_ID": name,
                "BITWARE_WORKER_TOKEN": credentials.tokens[name],
            }
            if plan.postgres_url and db:
                values["BITWARE_DATABASE_URL"] = plan.postgres_url
            return values

        admin_password = credentials.admin_password if first_start else ""
        kam_env = env("kam", plan.data_dir, "kam")
        kam_env["BITWARE_BOOTSTRAP_CREDENTIALS"] = credentials.bootstrap_list()
        kam_env["BITWARE_BOOTSTRAP_ADMIN_EMAIL"] = credentials.admin_email
        if admin_password:
            kam_env["BITWARE_BOOTSTRAP_ADMIN_PASSWORD"] = admin_password
        self.children = [
            Child("kam", "kam_server", kam_env, address["kam"]),
            Child(
                "orchestrator",
                "orchestrator_server",
                env("orchestrator", plan.data_dir, "orchestrator"),
                address["orchestrator"],
            ),
            *(
                Child(
                    name,
                    "granulator_server",
                    # One job store for every granulator: `granulator.db` in the data folder.
                    env(name, plan.data_dir, "granulator"),
                    address[name],
                )
                for name in ports
                if name.startswith("granulator")
            ),
            Child("gateway", "gateway", env("gateway", plan.data_dir), address["gateway"]),
        ]
        (plan.data_dir / "mesh.json").write_text(
            json.dumps(
                {"pid": os.getpid(), "addresses": address, "admin_email": credentials.admin_email},
                indent=2,
            )
        )
        return RunningMesh(self.children, credentials.admin_email, admin_password)

    async def start(self, ready_within: float = 30.0) -> RunningMesh:
        mesh = self._prepare()
        started = time.monotonic()
        for child in self.children:
            await self._spawn(child)
        try:
            async with asyncio.timeout(ready_within):
                await asyncio.gather(*(c.ready.wait() for c in self.children))
        except TimeoutError:
            late = [c.name for c in self.children if not c.ready.is_set()]
            await self.stop()
            raise RuntimeError(f"not ready after {ready_within:.0f}s: {', '.join(late)}") from None
        self.say(f"all servers healthy in {time.monotonic() - started:.1f}s")
        return mesh

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.started_at = time.monotonic()
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.module,
            env={**os.environ, **child.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=None if os.environ.get("BITWARE_SHOW_LOGS") else asyncio.subprocess.DEVNULL,
            # Ctrl-C reaches only the supervisor, which stops the children in order.
            start_new_session=True,
        )
        self._watchers.append(asyncio.create_task(self._watch(child, child.process)))

    async def _watch(self, child: Child, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").strip()
            if line.startswith(READY_PREFIX) and not child.ready.is_set():
                child.ready.set()
                if child.restarts:
                    self.say(f"{child.name} is back at {child.address} (pid {process.pid})")
        code = await process.wait()
        if self.stopping:
            return
        if time.monotonic() - child.started_at >= STABLE_AFTER:
            child.restarts = 0
        child.restarts += 1
        delay = min(30.0, 2.0 ** (child.restarts - 1))
        self.say(
            f"{child.name} (pid {process.pid}) {exit_reason(code)}; restarting in {delay:.0f}s "
            f"(restart {child.restarts})"
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(child)

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
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
