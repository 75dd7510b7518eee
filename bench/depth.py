"""Depth: claim latency and drain rate with 100 and with 10,000 queued executions, and the
orchestrator's RSS with 1,000 concurrent WatchExecution streams.

Method: one mesh as real processes (SQLite by default, `--postgres` for a scratch database on
127.0.0.1:5432; offline provider). The granulator is held off (admin DeregisterWorker
drain=true, repeated, as in drain.py), then executions are created straight through the
orchestrator's ExecutePipeline as the admin (staff may start executions), spread over
`--clients` clients each with the enterprise tier's limit of `--cap` running executions, as KAM
passes it (`--cap 0`: no limit, every execution ready at once).

- drain rate: the shallow queue (100) is filled and drained `--reps` times, then the deep one
  (10,000) is filled and `--drained` of it (1,000) drained. Each drain starts with a fresh
  granulator (the held one is killed and the Supervisor restarts it); the rate is taken
  afterwards from the executions' `ended_at` in the orchestrator's database, over windows of 80
  executions (the 10th to the 90th to end, the 110th to the 190th, …: past the worker's start,
  the same width at both depths), median over the windows.
- claim latency: `orchestrator_server.queue.claim` itself, run by this process on the
  orchestrator's database (the worker's registry row, as healthy, is the one worker), each claim
  rolled back so the depth stays; `--claims` times. On SQLite both queues are copied (SQLite's
  backup) when they are full and the claims alternate between the two copies, so that the
  machine's load falls on both alike and neither meets the live orchestrator's writes; on
  PostgreSQL each depth is measured on the live database while it is queued. It is the dispatcher's
  claim transaction: the running counts, the worker slots, the ordered candidate queries, the
  leases, offers and events of the stages it takes.
- footprint: with the deep queue held, `--streams` WatchExecution streams are opened (over 8
  channels) on queued executions, each waits for its first event, and the orchestrator's RSS is
  read from /proc.

It prints both depths, their ratios and the plans of the claim's and the housekeeping's reads
(EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE at both depths on PostgreSQL).

On PostgreSQL (`--postgres`) the two depths are measured interleaved, since a live database has no
copy to alternate with: two meshes as real processes, each on its own scratch database on
127.0.0.1:5432 (created by `Mesh`, dropped when it stops), one filled to `--shallow` queued and
one to `--deep`, both granulators held. Then `--turns` turns, each a drain window on one mesh
and then one on the other, in ABBA order (shallow–deep, deep–shallow, …) so that a load that
rises or falls over the run falls on both depths alike:

- before its window a mesh's queue is topped up to its depth (held, so it stays queued);
- its granulator is released (a fresh one, as above: its Supervisor restart count is reset so
  each restart comes after the same 1 s, not the growing back-off) until `--window` (100)
  executions of this window have ended, or `--limit` seconds;
- it is held again and waited on until no stage of it runs (at most 60 s), so that the next
  window has the machine's cores to itself, like this one;
- its rate is taken from the `ended_at` of the executions that ended in this window, between
  the 10th and the 90th to end (past the worker's start; the same as one window of a
  100-deep SQLite drain).

Two meshes rather than one orchestrator switched between the databases: switching means
restarting the orchestrator at every window (a cold start, a cold connection pool, and its
start-up inside the windows), and the idle mesh's housekeeping (once a second, on its own
database) runs during both depths' windows alike. The claims are timed on both live databases
alternately while both are held (`claim_times`). The figures are the medians over the windows of
each depth, their ratio, and the median of the paired ratios (each deep window against the
shallow window next to it).

    .venv/bin/python bench/depth.py [--postgres] [--shallow 100] [--deep 10000] [--streams 1000]
        [--turns 10] [--window 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from common import Mesh, MeshOptions, loadavg, log, med, pct, rss_mb, save, spec, table

from bitware.common.v1 import common_pb2
from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware_core.db import utcnow
from bitware_core.sql import Tx, select_rows
from orchestrator_server import models, queue

GRANULATOR = "granulator-1"
#: The claim's and the housekeeping's reads, as they send them (column lists shortened).
QUERIES = (
    "SELECT s.id FROM stages s JOIN executions e ON s.execution_id = e.id"
    " WHERE s.status = 'queued' AND s.capability = :capability"
    " AND s.queue_key < :turn AND s.ready_at <= :now ORDER BY s.queue_key LIMIT :limit",
    "SELECT client_id, count(*), max(client_concurrency) FROM executions"
    " WHERE status = 'running' GROUP BY client_id",
    "SELECT a.worker_id, count(*) FROM attempts a"
    " JOIN stages s ON s.id = a.stage_id AND a.epoch = s.epoch"
    " WHERE s.status = 'running' GROUP BY a.worker_id",
    "SELECT id FROM executions WHERE status IN ('queued', 'running') AND deadline_at < :now",
    "SELECT id FROM executions WHERE id IN (SELECT execution_id FROM stages"
    " WHERE status = 'queued' AND priority IN (1, 2, 3, 4) AND queued_at < :cutoff"
    " AND queue_key < :turn)",
    "SELECT status, priority, count(*), min(queued_at) FROM stages"
    " WHERE status IN ('queued', 'running', 'retry_wait') GROUP BY status, priority",
    "SELECT id FROM executions WHERE status IN ('succeeded', 'failed', 'cancelled')"
    " AND outcome_reported = false AND request_id != '' LIMIT 50",
)


@contextlib.contextmanager
def connect(url: str) -> Iterator[Tx]:
    """A `Tx` on the orchestrator's database, on the driver's own connection."""
    if url.startswith("sqlite"):
        sq = sqlite3.connect(url.split("///", 1)[1], timeout=30)
        try:
            yield Tx(sq, postgres=False)
        finally:
            sq.close()
    else:
        import psycopg

        pg = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))
        try:
            yield Tx(pg, postgres=True)
        finally:
            pg.close()


def claim_times(urls: list[str], times: int) -> list[dict[str, Any]]:
    """`queue.claim` `times` times on each database, interleaved (one claim on each in turn, so
    that the machine's load falls on all alike), each rolled back; latency p50/p95 in ms and
    the stages one claim takes."""
    with contextlib.ExitStack() as stack:
        txs = [stack.enter_context(connect(url)) for url in urls]
        workers = []
        for tx in txs:
            [worker] = select_rows(tx, models.Worker, "id = :id", {"id": GRANULATOR})
            worker.state = "healthy"
            tx._connection.rollback()
            workers.append(worker)
        took: list[list[float]] = [[] for _ in urls]
        claimed = [0 for _ in urls]
        for _ in range(times):
            for i, (tx, worker) in enumerate(zip(txs, workers, strict=True)):
                t0 = time.perf_counter()
                claimed[i] = len(queue.claim(tx, "bench-depth", [worker], {}, 30.0))
                took[i].append(time.perf_counter() - t0)
                tx._connection.rollback()
    return [
        {"p50_ms": pct(t, 50) * 1e3, "p95_ms": pct(t, 95) * 1e3, "claimed": c}
        for t, c in zip(took, claimed, strict=True)
    ]


def snapshot(url: str, path: Path) -> str:
    """A copy of a SQLite database (its queue as it is now); its URL."""
    source = url.split("///", 1)[1]
    with (
        contextlib.closing(sqlite3.connect(source)) as live,
        contextlib.closing(sqlite3.connect(path)) as copy,
    ):
        live.backup(copy)
    return f"sqlite:///{path}"


def plans(url: str) -> list[str]:
    """The plans of the claim's and the housekeeping's reads (on PostgreSQL run, with the
    values the orchestrator passes now: EXPLAIN ANALYZE, rolled back)."""
    params: dict[str, Any] = {
        "capability": "granulate",
        "turn": 1e12,
        "now": "2000-01-01",
        "cutoff": "2000-01-01",
        "limit": 128,
    }
    out = []
    with connect(url) as tx:
        if tx.postgres:  # the housekeeping's queue wait: 1 h, longer than any wait here
            now = utcnow()
            params |= {"now": tx.ts(now), "cutoff": tx.ts(now - timedelta(hours=1))}
        for sql in QUERIES:
            prefix = "EXPLAIN ANALYZE " if tx.postgres else "EXPLAIN QUERY PLAN "
            rows = tx.all(prefix + sql, params)
            out.append(sql[:70] + " …")
            out += ["    " + " ".join(str(c) for c in row) for row in rows]
        tx._connection.rollback()
    return out


class Depth:
    def __init__(self, mesh: Mesh, cap: int) -> None:
        self.mesh = mesh
        self.cap = cap
        self.registry = registry_pb2_grpc.WorkerRegistryServiceStub(mesh.orc_channel)
        self.holder: asyncio.Task[None] | None = None
        self.holding = asyncio.Event()
        child = next(c for c in mesh.supervisor.children if c.name == "orchestrator")
        self.url = child.env.get("BITWARE_DATABASE_URL") or (
            f"sqlite:///{mesh.data_dir.resolve() / 'orchestrator.db'}"
        )
        self.orchestrator_pid = mesh.pids()["orchestrator"]

    async def _drain(self) -> None:
        await self.registry.DeregisterWorker(
            registry_pb2.DeregisterWorkerRequest(worker_id=GRANULATOR, drain=True),
            metadata=self.mesh.admin,
            timeout=10,
        )

    async def hold(self) -> None:
        """Keeps the granulator draining (the orchestrator deregisters a drained idle worker,
        and the granulator then registers again on its next heartbeat)."""
        self.holding.clear()
        await self._drain()

        async def loop() -> None:
            while not self.holding.is_set():
                await self._drain()
                await asyncio.sleep(0.2)

        self.holder = asyncio.create_task(loop())
        await asyncio.sleep(0.5)

    async def fill(self, n: int) -> list[str]:
        """n executions through ExecutePipeline, 32 calls at a time."""
        ids: list[str] = []
        todo = list(range(n))
        clients = [c.client_id for c in self.mesh.clients]

        async def one() -> None:
            while todo:
                i = todo.pop()
                done = await self.mesh.orchestrator.ExecutePipeline(
                    orchestrator_pb2.ExecutePipelineRequest(
                        template_name="course_standard",
                        spec=spec(),
                        priority=common_pb2.PRIORITY_NORMAL,
                        client_id=clients[i % len(clients)],
                        client_concurrency_limit=self.cap,
                    ),
                    metadata=self.mesh.admin,
                    timeout=60,
                )
                ids.append(done.execution.execution_id)

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(32))), 1200)
        return ids

    async def left(self) -> int:
        q = await self.mesh.orchestrator.GetQueue(
            orchestrator_pb2.GetQueueRequest(), metadata=self.mesh.admin, timeout=30
        )
        return q.total_depth + q.running + q.retry_waiting

    async def release(self) -> None:
        """A fresh granulator: the held one is killed, the Supervisor restarts it."""
        self.holding.set()
        if self.holder is not None:
            await self.holder
        gran = next(c for c in self.mesh.supervisor.children if c.name == GRANULATOR)
        assert gran.process is not None
        gran.process.kill()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = await self.registry.ListWorkers(
                registry_pb2.ListWorkersRequest(), metadata=self.mesh.admin, timeout=10
            )
            if any(
                w.worker_id == GRANULATOR and w.state == registry_pb2.WORKER_STATE_HEALTHY
                for w in workers.workers
            ):
                return
            await asyncio.sleep(0.02)
        raise RuntimeError("the granulator did not come back within 120 s")

    async def wait_ended(self, queued: int, until: int, limit: float) -> None:
        """Until `until` of the `queued` executions have ended (at most `limit` seconds)."""
        deadline = time.monotonic() + limit
        for _ in range(int(limit / 0.5) + 1):  # GetQueue counts the queue: not too often
            if queued - await self.left() >= until or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    def rates(self, ids: list[str], windows: list[tuple[int, int]]) -> dict[str, float]:
        """Executions per second between the i-th and the j-th of `ids` to end, from their
        `ended_at` in the orchestrator's database (no polling error, no start-up transient)."""
        wanted = set(ids)
        with connect(self.url) as tx:
            rows = tx.all("SELECT id, ended_at FROM executions WHERE ended_at IS NOT NULL")
            tx._connection.rollback()
            ended = sorted(
                when
                for id_, when in ((r[0], tx.when(r[1])) for r in rows)
                if id_ in wanted and when
            )
        return {
            f"{i}–{j}": (j - i) / (ended[j - 1] - ended[i - 1]).total_seconds()
            for i, j in windows
            if i < j <= len(ended)
        }

    async def streams_rss(self, ids: list[str], n: int) -> dict[str, float]:
        """RSS of the orchestrator before and with n WatchExecution streams open (each has
        received its execution's history)."""
        before = rss_mb(self.orchestrator_pid)
        channels = [grpc.aio.insecure_channel(self.mesh.orchestrator_address) for _ in range(8)]
        stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
        calls = []
        got = 0

        async def first(call: Any) -> None:
            nonlocal got
            async for _ in call:
                got += 1
                return

        try:
            for i, execution_id in enumerate(ids[:n]):
                calls.append(
                    stubs[i % len(stubs)].WatchExecution(
                        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                        metadata=self.mesh.admin,
                        timeout=600,
                    )
                )
            await asyncio.wait_for(asyncio.gather(*(first(c) for c in calls)), 300)
            await asyncio.sleep(2)
            with_streams = rss_mb(self.orchestrator_pid)
        finally:
            for call in calls:
                call.cancel()
            for c in channels:
                await c.close()
        return {"streams": got, "rss_before_mb": before, "rss_streams_mb": with_streams}


def windows(drained: int, width: int = 80) -> list[tuple[int, int]]:
    """(10, 90), (110, 190), …: the same window of `width` executions along a drain."""
    return [(i + 10, i + 10 + width) for i in range(0, drained - width - 9, 100)]


async def run(a: argparse.Namespace) -> dict[str, Any]:
    options = MeshOptions(postgres=a.postgres, clients=a.clients)
    async with Mesh(options) as mesh:
        d = Depth(mesh, a.cap)
        shallow: dict[str, Any] = {"rates": []}
        deep: dict[str, Any] = {}
        # the shallow queue, filled and drained --reps times
        for rep in range(a.reps):
            await d.hold()
            ids = await d.fill(a.shallow)
            shallow["queued"] = await d.left()
            if rep == 0:
                if a.postgres:  # no copy of a live PostgreSQL database: measured now
                    [shallow["claims"]] = await asyncio.to_thread(claim_times, [d.url], a.claims)
                else:
                    shallow_url = snapshot(d.url, mesh.data_dir / "shallow.db")
            await d.release()
            await d.wait_ended(a.shallow, a.shallow, a.limit)
            shallow["rates"] += d.rates(ids, windows(a.shallow)).values()
            log(f"depth {a.shallow} rep {rep + 1}: drain {shallow['rates'][-1]:.1f}/s")
        # the deep queue
        await d.hold()
        t0 = time.perf_counter()
        ids = await d.fill(a.deep)
        deep["fill_s"] = time.perf_counter() - t0
        deep["queued"] = await d.left()
        log(f"depth {a.deep}: queued in {deep['fill_s']:.0f}s; left {deep['queued']}")
        if a.postgres:
            [deep["claims"]] = await asyncio.to_thread(claim_times, [d.url], a.claims)
        else:
            deep_url = snapshot(d.url, mesh.data_dir / "deep.db")
            shallow["claims"], deep["claims"] = await asyncio.to_thread(
                claim_times, [shallow_url, deep_url], a.claims
            )
        plans_of = await asyncio.to_thread(plans, d.url)
        if a.streams:
            deep |= await d.streams_rss(ids, a.streams)
            log(f"  RSS {deep['rss_before_mb']:.0f} → {deep['rss_streams_mb']:.0f} MB")
        drained = min(a.deep, a.drained)
        await d.release()
        await d.wait_ended(deep["queued"], drained, a.limit)
        deep["rates"] = list(d.rates(ids, windows(drained)).values())
        deep["overall"] = d.rates(ids, [(100, drained)])
        return {"shallow": shallow, "deep": deep, "plans": plans_of}


#: An ended execution (the index on (status, client_id) counts them without the queued ones).
ENDED = "status IN ('succeeded', 'failed', 'cancelled')"


async def pg_window(
    d: Depth, tx: Tx, depth: int, width: int, seen: set[str], limit: float
) -> dict[str, Any]:
    """One drain window on `d`'s mesh (see the docstring): topped up to `depth` queued, released
    until `width` executions have ended, held again; its rate between the 10th and the
    (width - 10)th of them to end. `seen`: the executions that ended before (updated)."""

    def count(sql: str) -> int:
        n = int(tx.one(sql)[0])
        tx._connection.rollback()
        return n

    waiting = count("SELECT count(*) FROM executions WHERE ended_at IS NULL")
    if depth > waiting:
        await d.fill(depth - waiting)
    queued = count("SELECT count(*) FROM executions WHERE ended_at IS NULL")
    ended0 = count(f"SELECT count(*) FROM executions WHERE {ENDED}")
    want = min(width, queued)
    load = loadavg()
    gran = next(c for c in d.mesh.supervisor.children if c.name == GRANULATOR)
    gran.restarts = 0  # restarted after the Supervisor's first delay (1 s), at every window
    await d.release()
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.1) + 1):
        if count(f"SELECT count(*) FROM executions WHERE {ENDED}") - ended0 >= want:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await d.hold()
    deadline = time.monotonic() + 60
    for _ in range(601):
        if count("SELECT count(*) FROM stages WHERE status = 'running'") == 0:
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    rows = tx.all("SELECT id, ended_at FROM executions WHERE ended_at IS NOT NULL")
    tx._connection.rollback()
    fresh = {r[0]: tx.when(r[1]) for r in rows if r[0] not in seen}
    seen.update(fresh)
    ended = sorted(w for w in fresh.values() if w)
    i, j = 10, width - 10
    rate = (j - i) / (ended[j - 1] - ended[i - 1]).total_seconds() if len(ended) >= j else 0.0
    return {"queued": queued, "ended": len(ended), "rate": rate, "load": load}


class Sampler:
    """What the sessions of some databases are doing, sampled from pg_stat_activity every 20 ms
    in a thread (at most `limit` seconds): per database, the active sessions' samples by wait
    and statement (a profile of where each database's time goes)."""

    def __init__(self, names: list[str], limit: float) -> None:
        import threading

        self.names, self.limit = names, limit
        self.stop = threading.Event()
        self.counts: dict[str, dict[str, int]] = {name: {} for name in names}
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg
        from common import PG_ADMIN_URL

        sql = (
            "SELECT datname, coalesce(wait_event_type || ':' || wait_event, 'running'),"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 70) FROM pg_stat_activity"
            " WHERE datname = ANY(%s) AND state = 'active' AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
            deadline = time.monotonic() + self.limit
            for _ in range(int(self.limit / 0.02) + 1):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                for db, wait, query in conn.execute(sql, (self.names,)).fetchall():
                    key = f"{wait} {query}"
                    self.counts[db][key] = self.counts[db].get(key, 0) + 1
                self.samples += 1
                time.sleep(0.02)

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.thread.join()
        return {"samples": self.samples, "active": self.counts}


async def run_postgres(a: argparse.Namespace) -> dict[str, Any]:
    """Both depths on two meshes, each on its own scratch database, drained in alternating
    windows (see the docstring)."""
    async with contextlib.AsyncExitStack() as stack:
        meshes = [
            await stack.enter_async_context(Mesh(MeshOptions(postgres=True, clients=a.clients)))
            for _ in range(2)
        ]
        lo, hi = (Depth(m, a.cap) for m in meshes)
        txs = [stack.enter_context(connect(d.url)) for d in (lo, hi)]
        for d in (lo, hi):
            await d.hold()
        t0 = time.perf_counter()
        ids = await hi.fill(a.deep)
        fill_s = time.perf_counter() - t0
        await lo.fill(a.shallow)
        shallow: dict[str, Any] = {"queued": await lo.left(), "rates": [], "windows": []}
        deep: dict[str, Any] = {"queued": await hi.left(), "rates": [], "windows": []}
        deep["fill_s"] = fill_s
        log(f"depth {a.deep}: queued in {fill_s:.0f}s; {a.shallow} on the other database")
        shallow["claims"], deep["claims"] = await asyncio.to_thread(
            claim_times, [lo.url, hi.url], a.claims
        )
        plans_of = await asyncio.to_thread(plans, hi.url)
        plans_shallow = await asyncio.to_thread(plans, lo.url)
        if a.streams:
            deep |= await hi.streams_rss(ids, a.streams)
            log(f"  RSS {deep['rss_before_mb']:.0f} → {deep['rss_streams_mb']:.0f} MB")
        seen: list[set[str]] = []
        for tx in txs:
            seen.append(
                {r[0] for r in tx.all("SELECT id FROM executions WHERE ended_at IS NOT NULL")}
            )
            tx._connection.rollback()
        sides = [(lo, txs[0], a.shallow, shallow, seen[0]), (hi, txs[1], a.deep, deep, seen[1])]
        names = [lo.mesh.pg_name, hi.mesh.pg_name]
        sampler = Sampler(names, a.limit * a.turns * 2) if a.sample else None
        for turn in range(a.turns):
            for d, tx, depth, into, done in sides if turn % 2 == 0 else sides[::-1]:
                w = await pg_window(d, tx, depth, a.window, done, a.limit)
                into["windows"].append(w)
                if w["rate"]:
                    into["rates"].append(w["rate"])
                log(
                    f"turn {turn + 1}: depth {w['queued']}: {w['rate']:.1f}/s"
                    f" ({w['ended']} ended; load {w['load']})"
                )
        profile = sampler.finish() if sampler else {}
        if profile:  # by depth rather than by database name
            profile["active"] = {
                depth: profile["active"][name]
                for depth, name in zip((a.shallow, a.deep), names, strict=True)
            }
        for d in (lo, hi):  # the holders stop before the meshes do
            d.holding.set()
            if d.holder is not None:
                await d.holder
        # each deep window against the shallow one next to it (ABBA: the same turn)
        paired = [
            x["rate"] / y["rate"]
            for x, y in zip(deep["windows"], shallow["windows"], strict=True)
            if x["rate"] and y["rate"]
        ]
        return {
            "shallow": shallow,
            "deep": deep,
            "paired": paired,
            "plans": plans_of,
            "plans_shallow": plans_shallow,
            "profile": profile,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shallow", type=int, default=100, help="the shallow queue's depth")
    ap.add_argument("--deep", type=int, default=10000, help="the deep queue's depth")
    ap.add_argument("--reps", type=int, default=5, help="times the shallow queue is drained")
    ap.add_argument("--clients", type=int, default=25)
    ap.add_argument("--cap", type=int, default=50, help="running executions per client (0: none)")
    ap.add_argument("--claims", type=int, default=300, help="claims timed at each depth")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument(
        "--drained", type=int, default=1000, help="executions of the deep queue drained"
    )
    ap.add_argument("--limit", type=float, default=600, help="seconds a drain may take at most")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--turns", type=int, default=10, help="PostgreSQL: drain windows per depth")
    ap.add_argument("--window", type=int, default=100, help="PostgreSQL: executions per window")
    ap.add_argument(
        "--sample",
        action="store_true",
        help="PostgreSQL: sample pg_stat_activity of both databases during the windows",
    )
    a = ap.parse_args()
    if a.postgres and not 20 < a.window <= a.shallow:
        ap.error("--window must be above 20 and at most --shallow")
    load0 = loadavg()
    out = asyncio.run(run_postgres(a) if a.postgres else run(a))
    lo, hi = out["shallow"], out["deep"]

    def rate(r: dict[str, Any]) -> str:
        return f"{med(r['rates']):.1f}/s ({min(r['rates']):.1f}–{max(r['rates']):.1f}; {len(r['rates'])} windows)"

    rows = [
        [
            depth,
            r["queued"],
            f"{r['claims']['p50_ms']:.2f}",
            f"{r['claims']['p95_ms']:.2f}",
            r["claims"]["claimed"],
            rate(r),
        ]
        for depth, r in ((a.shallow, lo), (a.deep, hi))
    ]
    rows.append(
        [
            "ratio",
            "",
            f"{hi['claims']['p50_ms'] / lo['claims']['p50_ms']:.2f}",
            f"{hi['claims']['p95_ms'] / lo['claims']['p95_ms']:.2f}",
            "",
            f"{med(hi['rates']) / med(lo['rates']):.2f}",
        ]
    )
    db = (
        "PostgreSQL (two databases, drain windows and claims alternating)"
        if a.postgres
        else "SQLite (claims alternating between copies of both queues)"
    )
    print(f"\n{db}; {a.clients} clients, cap {a.cap}; load avg at start {load0}, end {loadavg()}")
    print(
        table(
            [
                "depth",
                "queued",
                "claim p50 ms",
                "claim p95 ms",
                "stages/claim",
                "drain, 80-execution windows",
            ],
            rows,
        )
    )
    if "overall" in hi:
        overall = " ".join(f"{k}: {v:.1f}/s" for k, v in hi["overall"].items())
        print(f"deep queue, executions {overall}")
    if "paired" in out:
        p = out["paired"]
        print(
            f"deep/shallow, window by window ({len(p)} pairs): median ×{med(p):.2f}"
            f" ({min(p):.2f}–{max(p):.2f})"
        )
    if "streams" in hi:
        print(
            f"orchestrator RSS: {hi['rss_before_mb']:.0f} MB with the deep queue, "
            f"{hi['rss_streams_mb']:.0f} MB with {hi['streams']} WatchExecution streams open"
        )
    print("\nplans of the claim's and the housekeeping's reads at the deep queue:")
    print("\n".join(out["plans"]))
    if "plans_shallow" in out:
        print(f"\nthe same at the shallow queue ({a.shallow}):")
        print("\n".join(out["plans_shallow"]))
    if out.get("profile"):
        prof = out["profile"]
        print(f"\npg_stat_activity, every 20 ms during the windows ({prof['samples']} samples):")
        for depth, counts in prof["active"].items():
            total = sum(counts.values())
            print(f"  depth {depth}: {total} active-session samples; the most frequent:")
            for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8]:
                print(f"    {n:6d} {100 * n / max(total, 1):5.1f}%  {key}")
    path = save("depth", {"args": vars(a), "load": load0, **out})
    print(f"results: {path}")
    summary = (
        f"claim p50 ×{hi['claims']['p50_ms'] / lo['claims']['p50_ms']:.2f}, "
        f"p95 ×{hi['claims']['p95_ms'] / lo['claims']['p95_ms']:.2f}; "
        f"drain ×{med(hi['rates']) / med(lo['rates']):.2f}"
    )
    if "paired" in out:
        summary += f" (paired ×{med(out['paired']):.2f})"
    if "streams" in hi:
        summary += f"; RSS with {hi['streams']} streams {hi['rss_streams_mb']:.0f} MB"
    print(
        f"SUMMARY depth ({'PostgreSQL' if a.postgres else 'SQLite'}, {a.deep} vs {a.shallow}): {summary}"
    )


if __name__ == "__main__":
    main()
