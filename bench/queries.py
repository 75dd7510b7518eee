"""Database work per execution: every SQL statement and transaction each service runs for one
single-stage execution, counted by SQLite itself (a trace callback on every connection, so the
hand-written SQL of the hot path counts as much as SQLAlchemy's) on an in-process mesh
(`bitware_mesh.inprocess.start_mesh`, SQLite files), executions run one at a time (`--window`: that
many at once, to see what batching under load saves), offline provider.

    .venv/bin/python bench/queries.py [--quick] [--n 20] [--top 15] [--window 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from sqlalchemy import event
from sqlalchemy.engine import Engine

from bitware_core.config import QueueSettings, Settings
from bitware_mesh.inprocess import start_mesh

STATS: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
COMMITS: collections.Counter[str] = collections.Counter()
ON = {"on": False}


def _service(url: str) -> str:
    for name in ("kam", "orchestrator", "granulator"):
        if f"{name}.db" in url:
            return name
    return url


def _shape(sql: str) -> str:
    sql = " ".join(sql.split())
    m = re.match(r"(SELECT|INSERT INTO|UPDATE|DELETE FROM)\s+(.*)", sql, re.I)
    if not m:
        return sql[:40]
    verb, rest = m.group(1).upper(), m.group(2)
    if verb == "SELECT":
        t = re.search(r"\bFROM\s+(\w+)", rest, re.I)
        return f"SELECT {t.group(1) if t else '?'}"
    return f"{verb} {rest.split()[0]}"


@event.listens_for(Engine, "engine_connect")
def _trace(conn: Any) -> None:
    service = _service(str(conn.engine.url))

    def count(statement: str) -> None:
        if not ON["on"]:
            return
        verb = statement.split(None, 1)[0].upper() if statement.strip() else ""
        if verb == "COMMIT":
            COMMITS[service] += 1
        elif verb not in ("BEGIN", "ROLLBACK", "PRAGMA"):
            STATS[service][_shape(statement)] += 1

    driver = conn.connection.driver_connection
    if hasattr(driver, "set_trace_callback"):
        driver.set_trace_callback(count)


class InProc:
    """Just enough of common.Mesh for common.run_one, on an in-process mesh."""

    async def start(self, data: Path, clients: int = 1) -> InProc:
        import grpc

        from bitware.kam.v1 import auth_pb2, auth_pb2_grpc, requests_pb2_grpc
        from bitware.orchestrator.v1 import orchestrator_pb2_grpc

        self.mesh = await start_mesh(
            data, base=Settings(queue=QueueSettings(heartbeat_interval=0.5))
        )
        self.template = ""  # the client's default template (common.submit)
        self.kam_channel = grpc.aio.insecure_channel(self.mesh.kam.address)
        login = await auth_pb2_grpc.AuthServiceStub(self.kam_channel).Login(
            auth_pb2.LoginRequest(
                email=self.mesh.credentials.admin_email,
                password=self.mesh.credentials.admin_password,
            ),
            timeout=10,
        )
        self.admin = (("x-bitware-session-token", login.session_token),)
        # One client per execution in flight (a client's rate limit would refuse the rest).
        self.clients = [
            await common.Mesh.new_client(self, f"Bench {i}")  # type: ignore[arg-type]
            for i in range(clients)
        ]
        self.orc_channel = grpc.aio.insecure_channel(self.mesh.orchestrator.address)
        self.requests = requests_pb2_grpc.RequestServiceStub(self.kam_channel)
        self.orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(self.orc_channel)
        return self

    async def stop(self) -> None:
        await self.kam_channel.close()
        await self.orc_channel.close()
        await self.mesh.stop()


async def run(n: int, window: int = 1) -> tuple[int, float]:
    data = Path(tempfile.mkdtemp(prefix="bitware-bench-q-"))
    m = await InProc().start(data, window)
    try:
        for _ in range(50):  # until the granulator has registered
            if (await common.run_one(m, m.clients[0])).ok:  # type: ignore[arg-type]
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # let the housekeeping settle
        ON["on"] = True
        t0 = time.perf_counter()
        ok = 0
        left = n
        failures: list[str] = []

        async def one_after_another(client: common.Client) -> None:
            nonlocal ok, left
            while left > 0:
                left -= 1
                result = await common.run_one(m, client)  # type: ignore[arg-type]
                ok += result.ok
                if not result.ok and not failures:
                    failures.append(result.error)

        await asyncio.gather(*(one_after_another(client) for client in m.clients))
        if failures:
            print(f"first failure: {failures[0]}")
        await asyncio.sleep(0.3)  # the outcome report lands
        ON["on"] = False
        return ok, time.perf_counter() - t0
    finally:
        await m.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--window", type=int, default=1, help="executions in flight at once (1: one at a time)"
    )
    a = ap.parse_args()
    if a.quick:
        a.n = 5
    ok, el = asyncio.run(run(a.n, a.window))
    print(
        f"\n{ok}/{a.n} executions succeeded in {el:.1f}s ({a.window} at a time; "
        f"~{el / a.n * 1e3:.0f} ms each)"
    )
    rows = []
    totals = {}
    for svc, c in sorted(STATS.items()):
        totals[svc] = sum(c.values()) / a.n
        rows.append([svc, f"{totals[svc]:.1f}", f"{COMMITS[svc] / a.n:.1f}", ""])
        for shape, k in c.most_common(a.top):
            rows.append(["", "", "", f"{k / a.n:5.1f}  {shape}"])
    print(
        common.table(
            ["service", "statements/exec", "commits/exec", "by statement (per exec)"], rows
        )
    )
    common.save(
        "queries",
        {"n": a.n, "stats": {k: dict(v) for k, v in STATS.items()}, "commits": dict(COMMITS)},
    )
    print(
        "SUMMARY queries: per execution "
        + ", ".join(
            f"{s} {t:.0f} statements/{COMMITS[s] / a.n:.0f} commits" for s, t in totals.items()
        )
        + " (background polling included)"
    )


if __name__ == "__main__":
    main()
