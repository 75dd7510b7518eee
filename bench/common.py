"""Shared pieces of the benches: statistics, a mesh started as real processes (the Supervisor
behind `bitware up`), enterprise clients with API keys, one execution end to end (KAM
CreateRequest + ExecuteRequest, then WatchExecution until the terminal event), a bounded load
loop, /proc readers and the table/summary printers.

Everything binds 127.0.0.1. Every loop is bounded by a count and a time. Results also go to
$BENCH_RESULTS (default /tmp/bench-results)/<name>.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware.worker.v1 import worker_pb2_grpc
from bitware_mesh.supervisor import MeshPlan, Supervisor

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
RESULTS = Path(os.environ.get("BENCH_RESULTS", "/tmp/bench-results"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_ADMIN_URL = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
TOPIC, AUDIENCE, GRANULARITY = "Bench Topic", "engineers", 3  # = fake_llm.py's document
TERMINAL = {
    orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED,
    orchestrator_pb2.EVENT_TYPE_EXECUTION_FAILED,
    orchestrator_pb2.EVENT_TYPE_EXECUTION_CANCELLED,
}
#: At most this many in-flight executions per client: the enterprise tier allows 50 running at
#: once, and KAM counts a request as running until the orchestrator's outcome report lands, a
#: moment after the watcher saw the end; so load is spread over clients, 16 each.
PER_CLIENT = 16


# ------------------------------------------------------------------ statistics
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of the values (sorted here)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def mmm(values: list[float], nd: int = 1) -> str:
    """`median (min–max)` of per-repetition figures."""
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    f = f"{{:,.{nd}f}}"
    if len(values) == 1:
        return f.format(values[0])
    return (
        f"{f.format(statistics.median(values))} ({f.format(min(values))}–{f.format(max(values))})"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------ /proc
def proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK_TCK
    except OSError:
        return 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


class CpuMeter:
    """CPU seconds used by our processes (the given pids and this one) during a window, and the
    CPU used by everyone else on the machine (`foreign_cores`: 0 = quiet, 2 = both cores busy)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def _own(self) -> float:
        return sum(proc_cpu_s(p) for p in [os.getpid(), *self.pids])

    def __enter__(self) -> CpuMeter:
        self.t0, self.b0, self.o0 = time.perf_counter(), _busy_s(), self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        el = time.perf_counter() - self.t0
        self.own_s = self._own() - self.o0
        self.foreign_cores = max(0.0, ((_busy_s() - self.b0) - self.own_s) / el) if el else 0.0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ------------------------------------------------------------------ PostgreSQL scratch databases
def pg_create() -> tuple[str, str]:
    """A fresh database `bench_<random>`; returns (name, SQLAlchemy URL)."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://{PG_ADMIN_URL.split('://', 1)[1]}/{name}"


def pg_drop(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ the fake LLM endpoint
class FakeLLM:
    """bench/fake_llm.py as a child process, answering each call after `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [PY, str(HERE / "fake_llm.py"), "--max-life", "3600", "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "FAKE_LLM_READY":
            self.stop()
            raise RuntimeError("fake LLM did not start")
        self.base_url = f"http://127.0.0.1:{line[1]}/v1"

    def stats(self) -> dict[str, int]:
        """Calls received, calls not yet answered and the most at once (`GET /stats`)."""
        import urllib.request

        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats", timeout=10) as r:
            stats: dict[str, int] = json.load(r)
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------ bench workers of their own
async def serve_worker(
    servicer: worker_pb2_grpc.WorkerServiceServicer,
    orchestrator: str,
    worker_id: str,
    capability: str,
    slots: int,
    max_life: float,
) -> None:
    """The life of a bench worker process: serves `servicer` on a free loopback port, registers
    with the orchestrator under the credential in $BENCH_WORKER_TOKEN, prints `WORKER_READY`,
    then sends heartbeats until SIGTERM or `max_life` seconds."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    meta = (
        ("authorization", f"Bearer {os.environ['BENCH_WORKER_TOKEN']}"),
        ("x-worker-id", worker_id),
    )
    async with grpc.aio.insecure_channel(orchestrator) as ch:
        registry = registry_pb2_grpc.WorkerRegistryServiceStub(ch)
        await registry.RegisterWorker(
            registry_pb2.RegisterWorkerRequest(
                worker_id=worker_id,
                address=f"127.0.0.1:{port}",
                capabilities=[capability],
                max_concurrency=slots,
                version="bench",
            ),
            metadata=meta,
            timeout=10,
        )
        print("WORKER_READY", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        end = time.monotonic() + max_life
        while not stop.is_set() and time.monotonic() < end:
            try:
                await registry.Heartbeat(
                    registry_pb2.HeartbeatRequest(worker_id=worker_id), metadata=meta, timeout=5
                )
            except grpc.aio.AioRpcError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    await server.stop(0.5)


async def add_template(mesh: Mesh, name: str, capability: str, action: str, what: str) -> None:
    """A one-stage master template whose stage goes to `capability` (a bench worker's)."""
    stage = templates_pb2.StageDefinition(
        order=1, name=action, capability=capability, action=action, structure_template="course"
    )
    stage.timeout.FromSeconds(60)
    stage.retry_policy.max_attempts = 1
    template = templates_pb2.MasterTemplate(
        name=name,
        description=f"bench: {what}",
        structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
        stages=[stage],
        cost_estimate_usd=0.0,
    )
    template.execution_timeout.FromSeconds(120)
    await templates_pb2_grpc.TemplateServiceStub(mesh.kam_channel).CreateMasterTemplate(
        templates_pb2.CreateMasterTemplateRequest(template=template),
        metadata=mesh.admin,
        timeout=10,
    )


async def start_worker(mesh: Mesh, worker_id: str, command: list[str]) -> subprocess.Popen[bytes]:
    """Runs `command` (a bench worker's script and its arguments) as a process holding a fresh
    KAM credential for `worker_id`; returns once it says `WORKER_READY`."""
    credential = await accounts_pb2_grpc.WorkerCredentialServiceStub(
        mesh.kam_channel
    ).CreateWorkerCredential(
        accounts_pb2.CreateWorkerCredentialRequest(worker_id=worker_id),
        metadata=mesh.admin,
        timeout=10,
    )
    worker = subprocess.Popen(
        [PY, *command],
        env={**os.environ, "BENCH_WORKER_TOKEN": credential.token},
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), 30)
    if not line.startswith(b"WORKER_READY"):
        worker.kill()
        raise RuntimeError(f"bench worker {worker_id} did not start: {line!r}")
    return worker


# ------------------------------------------------------------------ a mesh of real processes
@dataclass
class MeshOptions:
    #: `offline`, `openai` (the fake LLM is started) or `noop` (stages go to bench/noop_worker.py)
    provider: str = "offline"
    llm_delay: float = 0.0  # seconds the fake LLM takes to answer each call
    postgres: bool = False
    granulator_slots: int = 0  # 0 = the product default (BITWARE_MAX_CONCURRENT_JOBS)
    extra_orchestrators: int = 0  # more orchestrator processes on the same database
    granulators: int = 1  # granulator processes (`bitware up --granulators N`)
    clients: int = 4
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Client:
    client_id: str
    key: tuple[tuple[str, str], ...]


class Mesh:
    """KAM, orchestrator, granulator and gateway as separate processes (the Supervisor of
    `bitware up`, with free ports and a scratch data folder), plus what the benches need: the
    admin's session, enterprise clients with large budgets, long-lived channels."""

    def __init__(self, options: MeshOptions | None = None) -> None:
        self.options = options or MeshOptions()
        self.data_dir = Path(tempfile.mkdtemp(prefix="bitware-bench-"))
        self.fake: FakeLLM | None = None
        self.pg_name = ""
        self.extra: list[subprocess.Popen[bytes]] = []
        self.extra_addresses: list[str] = []
        self.clients: list[Client] = []
        #: The master template executions run ("": the default one).
        self.template = ""
        self.workers: list[subprocess.Popen[bytes]] = []
        self._saved_env: dict[str, str | None] = {}

    def _setenv(self, values: dict[str, str]) -> None:
        for k, v in values.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    async def start(self) -> Mesh:
        o = self.options
        env = {"BITWARE_LOG_LEVEL": "WARNING", **o.env}
        if o.provider == "openai":
            self.fake = FakeLLM(o.llm_delay)
            env |= {
                "BITWARE_OPENAI_BASE_URL": self.fake.base_url,
                "BITWARE_OPENAI_API_KEY": "sk-bench",
                "BITWARE_OPENAI_MODEL": "gpt-4o-mini",
            }
        if o.provider == "noop":  # KAM takes templates only with capabilities it knows
            env["BITWARE_EXTRA_CAPABILITIES"] = "noop"
        if o.granulator_slots:
            env["BITWARE_MAX_CONCURRENT_JOBS"] = str(o.granulator_slots)
        self._setenv(env)  # the Supervisor passes os.environ on to its children
        url = ""
        self.admin_password = ""
        if o.postgres:
            self.pg_name, url = pg_create()
            # `bitware up --postgres` treats every start as a restart and bootstraps no admin
            # (Supervisor._prepare: first_start is False whenever postgres_url is set), so a
            # fresh database would have none: hand KAM a password the same way it would.
            import secrets

            self.admin_password = secrets.token_urlsafe(18)
            self._setenv({"BITWARE_BOOTSTRAP_ADMIN_PASSWORD": self.admin_password})
        plan = MeshPlan(
            data_dir=self.data_dir,
            kam_port=0,
            orchestrator_port=0,
            granulator_port=0,
            gateway_port=0,
            granulators=o.granulators,
            postgres_url=url,
        )
        self.supervisor = Supervisor(plan, say=lambda _line: None)
        t0 = time.perf_counter()
        self.running = await self.supervisor.start(ready_within=60)
        self.up_seconds = time.perf_counter() - t0
        self.kam_address = self.running.address("kam")
        self.orchestrator_address = self.running.address("orchestrator")
        self.gateway_address = self.running.address("gateway")
        for _ in range(o.extra_orchestrators):
            await self._start_extra_orchestrator()
        self.kam_channel = grpc.aio.insecure_channel(self.kam_address)
        self.orc_channel = grpc.aio.insecure_channel(self.orchestrator_address)
        self.requests = requests_pb2_grpc.RequestServiceStub(self.kam_channel)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(self.orc_channel)
        await self._login()
        for i in range(o.clients):
            self.clients.append(await self.new_client(f"Bench {i}"))
        if o.provider == "noop":
            await self._start_noop_worker()
        await self.wait_for_worker()
        return self

    async def _start_extra_orchestrator(self) -> None:
        child = next(c for c in self.supervisor.children if c.name == "orchestrator")
        # Port 0: it binds a free port itself and reports it on its ready line.
        env = {**os.environ, **child.env, "BITWARE_PORT": "0"}
        env.pop("BITWARE_METRICS_ADDRESS", None)
        proc = subprocess.Popen(
            [PY, "-m", "orchestrator_server"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line.startswith(b"BITWARE_READY"):
            raise RuntimeError(f"the extra orchestrator did not start: {line!r}")
        self.extra.append(proc)
        self.extra_addresses.append(line.decode().split()[2])

    async def _start_noop_worker(self) -> None:
        import noop_worker

        await add_template(
            self, noop_worker.TEMPLATE, noop_worker.CAPABILITY, "run", "a worker that does nothing"
        )
        script = str(HERE / "noop_worker.py")
        args = ["--orchestrator", self.orchestrator_address, "--worker-id", "bench-noop"]
        self.workers.append(await start_worker(self, "bench-noop", [script, *args]))
        self.template = noop_worker.TEMPLATE

    async def _login(self) -> None:
        login = await auth_pb2_grpc.AuthServiceStub(self.kam_channel).Login(
            auth_pb2.LoginRequest(
                email=self.running.admin_email,
                password=self.running.admin_password or self.admin_password,
            ),
            timeout=10,
        )
        self.admin = (("x-bitware-session-token", login.session_token),)

    async def new_client(self, name: str) -> Client:
        created = await accounts_pb2_grpc.ClientServiceStub(self.kam_channel).CreateClient(
            accounts_pb2.CreateClientRequest(
                client=accounts_pb2.Client(
                    company_name=name,
                    contact_email=f"{uuid.uuid4().hex[:8]}@bench.test",
                    tier=common_pb2.TIER_ENTERPRISE,
                    monthly_budget_usd=1e9,
                )
            ),
            metadata=self.admin,
            timeout=10,
        )
        key = await accounts_pb2_grpc.ApiKeyServiceStub(self.kam_channel).CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(client_id=created.client.client_id, name="bench"),
            metadata=self.admin,
            timeout=10,
        )
        return Client(created.client.client_id, (("x-api-key", key.key),))

    async def wait_for_worker(self, within: float = 30.0) -> None:
        """Until an execution succeeds (the granulator has registered and answers)."""
        deadline = time.monotonic() + within
        while True:
            r = await run_one(self, self.clients[0])
            if r.ok:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no execution succeeded within {within}s: {r.error}")
            await asyncio.sleep(0.2)

    def pids(self) -> dict[str, int]:
        out = {c.name: c.process.pid for c in self.supervisor.children if c.process}
        for i, p in enumerate(self.extra):
            out[f"orchestrator-{i + 2}"] = p.pid
        for i, p in enumerate(self.workers):
            out[f"worker-{i + 1}"] = p.pid
        return out

    async def stop(self) -> None:
        for ch in (getattr(self, "kam_channel", None), getattr(self, "orc_channel", None)):
            if ch is not None:
                await ch.close()
        for p in [*self.workers, *self.extra]:
            if p.poll() is None:
                p.terminate()
                try:
                    await asyncio.to_thread(p.wait, 10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if hasattr(self, "supervisor"):
            await self.supervisor.stop()
        if self.fake:
            self.fake.stop()
        if self.pg_name:
            pg_drop(self.pg_name)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.data_dir, ignore_errors=True)

    async def __aenter__(self) -> Mesh:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ------------------------------------------------------------------ one execution end to end
@dataclass
class Result:
    ok: bool
    latency: float = 0.0
    execution_id: str = ""
    error: str = ""
    #: (event, perf_counter at receipt, time.time() at receipt)
    events: list[tuple[orchestrator_pb2.ExecutionEvent, float, float]] = field(default_factory=list)


_REQUESTS = itertools.count(1)


def spec() -> common_pb2.ContentSpec:
    """The bench's request; each topic is different, as real requests are (so nothing that
    remembers a request's work, such as the granulator's estimates, makes the bench look
    better than real use)."""
    return common_pb2.ContentSpec(
        topic=f"{TOPIC} {next(_REQUESTS)}",
        structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
        audience=AUDIENCE,
        granularity=GRANULARITY,
    )


async def submit(mesh: Mesh, client: Client, template: str = "") -> str:
    """CreateRequest + ExecuteRequest on KAM; returns the execution id."""
    created = await mesh.requests.CreateRequest(
        requests_pb2.CreateRequestRequest(spec=spec(), master_template=template),
        metadata=client.key,
        timeout=30,
    )
    executed = await mesh.requests.ExecuteRequest(
        requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
        metadata=client.key,
        timeout=30,
    )
    return executed.execution_id


async def watch(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
    client: Client,
    execution_id: str,
    keep: bool = False,
    timeout: float = 120.0,
    batched: bool = False,
) -> tuple[bool, list[tuple[orchestrator_pb2.ExecutionEvent, float, float]]]:
    """Follows an execution's events until its terminal one; `batched` asks for several events
    per message."""
    events = []
    call = stub.WatchExecution(
        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id, batched=batched),
        metadata=client.key,
        timeout=timeout,
    )
    try:
        async for message in call:
            for event in message.events if batched else [message.event]:
                if keep:
                    events.append((event, time.perf_counter(), time.time()))
                if event.type in TERMINAL:
                    return event.type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED, events
    finally:
        call.cancel()
    return False, events


async def run_one(
    mesh: Mesh, client: Client, keep: bool = False, template: str = "", batched: bool = False
) -> Result:
    """One single-stage execution through the full mesh (of `template`, else the mesh's), timed
    from CreateRequest to the terminal event arriving on this client's WatchExecution stream
    (several events per message when `batched`)."""
    t0 = time.perf_counter()
    try:
        execution_id = await submit(mesh, client, template or mesh.template)
        ok, events = await watch(mesh.orchestrator, client, execution_id, keep, batched=batched)
    except grpc.aio.AioRpcError as error:
        return Result(
            False, time.perf_counter() - t0, error=f"{error.code().name}: {error.details()}"
        )
    return Result(ok, time.perf_counter() - t0, execution_id, "" if ok else "not succeeded", events)


async def load(
    n: int,
    dur: float,
    max_count: int,
    one: Callable[[int], Awaitable[Result]],
) -> dict[str, Any]:
    """`n` loops each running `one(i)` back to back, until `max_count` started in total or
    `dur` seconds passed (each loop finishes its current execution); rate, latency, errors."""
    lat: list[float] = []
    errors: list[str] = []
    state = {"left": max_count}
    deadline = time.perf_counter() + dur

    async def loop(i: int) -> None:
        while state["left"] > 0 and time.perf_counter() < deadline:
            state["left"] -= 1
            r = await one(i)
            (lat if r.ok else errors).append(r.latency if r.ok else r.error)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(loop(i) for i in range(n))), dur + 180)
    el = time.perf_counter() - t0
    return {
        "n": len(lat),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "per_s": len(lat) / el,
        "p50_ms": pct(lat, 50) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "elapsed_s": el,
    }


def client_for(mesh: Mesh, i: int) -> Client:
    """Loop i's client: loops spread round-robin, so each client has at most n/len(clients)."""
    return mesh.clients[i % len(mesh.clients)]


# ------------------------------------------------------------------ output
def versions() -> dict[str, str]:
    import google.protobuf
    import sqlalchemy

    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "grpc": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "bench": name,
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": versions(),
                **data,
            },
            indent=2,
            default=str,
        )
    )
    return path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
