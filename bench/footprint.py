"""Footprint: RSS of each server process idle and under load, and `bitware up` time until all
servers are healthy.

Method: the Supervisor behind `bitware up` starts KAM, orchestrator, granulator and gateway as
separate processes (free ports, SQLite, offline provider). Up time: from `Supervisor.start()` to
every server healthy — the Supervisor's own readiness (each prints BITWARE_READY once serving),
then confirmed by a `grpc.health.v1` Check answering SERVING on each gRPC server and the
gateway's /healthz answering 200 — median of `--starts` starts, cold (fresh data folder: first
start, migrations, seeding, the admin's scrypt hash) and warm (same folder again). RSS: VmRSS
from /proc/PID/status, idle = 3 s after start with no traffic; under load = the peak over 0.5 s
samples while W=16 executions run for `--dur` seconds (a quarter of them watched over the
gateway's SSE instead of gRPC, so the gateway works too).

    .venv/bin/python bench/footprint.py [--quick] [--starts 5] [--dur 15]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx  # imported here, not while a start is being timed
from common import (
    Mesh,
    MeshOptions,
    Result,
    client_for,
    load,
    loadavg,
    log,
    med,
    mmm,
    proc_cpu_s,
    rss_mb,
    run_one,
    save,
    submit,
    table,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bitware_mesh.supervisor import MeshPlan, Supervisor

SERVERS = ("kam", "orchestrator", "granulator-1", "gateway")


async def healthy(addresses: dict[str, str], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    pending = set(addresses)
    async with httpx.AsyncClient() as http:
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                try:
                    if name == "gateway":
                        r = await http.get(f"http://{addresses[name]}/healthz", timeout=2)
                        if r.status_code == 200:
                            pending.discard(name)
                    else:
                        async with grpc.aio.insecure_channel(addresses[name]) as ch:
                            a = await health_pb2_grpc.HealthStub(ch).Check(
                                health_pb2.HealthCheckRequest(), timeout=2
                            )
                            if a.status == health_pb2.HealthCheckResponse.SERVING:
                                pending.discard(name)
                except (grpc.aio.AioRpcError, httpx.HTTPError):
                    pass
            if pending:
                await asyncio.sleep(0.01)
    if pending:
        raise RuntimeError(f"not healthy: {pending}")


async def start_once(data: Path) -> dict[str, Any]:
    plan = MeshPlan(
        data_dir=data, kam_port=0, orchestrator_port=0, granulator_port=0, gateway_port=0
    )
    sup = Supervisor(plan, say=lambda _l: None)
    t0 = time.perf_counter()
    running = await sup.start(ready_within=60)
    ready = time.perf_counter() - t0
    try:
        await healthy({n: running.address(n) for n in SERVERS})
        up = time.perf_counter() - t0
        cpu = {c.name: proc_cpu_s(c.process.pid) for c in sup.children if c.process}
        await asyncio.sleep(3.0)
        rss = {c.name: rss_mb(c.process.pid) for c in sup.children if c.process}
    finally:
        await sup.stop()
    return {"ready_s": ready, "healthy_s": up, "rss": rss, "start_cpu_s": cpu}


async def sse_watch(http: Any, mesh: Mesh, i: int) -> Result:
    client = client_for(mesh, i)
    t0 = time.perf_counter()
    execution_id = await submit(mesh, client)
    url = f"http://{mesh.gateway_address}/api/executions/{execution_id}/events"
    async with http.stream(
        "GET", url, headers={"X-API-Key": dict(client.key)["x-api-key"]}, timeout=120
    ) as r:
        async for line in r.aiter_lines():
            if line.startswith("event: EXECUTION_"):
                ok = line.endswith("SUCCEEDED")
                if ok or line.endswith(("FAILED", "CANCELLED")):
                    return Result(ok, time.perf_counter() - t0, execution_id)
    return Result(False, time.perf_counter() - t0, execution_id, "stream ended early")


async def under_load(dur: float, w: int) -> dict[str, Any]:
    import httpx

    async with Mesh(MeshOptions()) as mesh, httpx.AsyncClient() as http:
        pids = mesh.pids()
        idle = {n: rss_mb(p) for n, p in pids.items()}
        peak = dict(idle)
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                for n, p in pids.items():
                    peak[n] = max(peak[n], rss_mb(p))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())

        async def one(i: int) -> Result:
            if i % 4 == 0:
                return await sse_watch(http, mesh, i)
            return await run_one(mesh, client_for(mesh, i))

        r = await load(w, dur, 100_000, one)
        stop.set()
        await sampler
        after = {n: rss_mb(p) for n, p in pids.items()}
    return {"idle_after_warmup": idle, "peak": peak, "after": after, "load": r}


async def run(a: argparse.Namespace) -> dict[str, Any]:
    cold, warm = [], []
    for i in range(a.starts):
        data = Path(tempfile.mkdtemp(prefix="bitware-bench-up-"))
        try:
            cold.append(await start_once(data))
            warm.append(await start_once(data))
        finally:
            shutil.rmtree(data, ignore_errors=True)
        log(
            f"  start {i + 1}: cold {cold[-1]['healthy_s']:.2f}s, warm {warm[-1]['healthy_s']:.2f}s"
        )
    loaded = await under_load(a.dur, a.window)
    log(f"  load: {loaded['load']['per_s']:.1f} execs/s, errors {loaded['load']['errors']}")
    return {"cold": cold, "warm": warm, "loaded": loaded}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--dur", type=float, default=15.0)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.starts, a.dur = 2, 5.0
    load0 = loadavg()
    res = asyncio.run(run(a))
    rows = []
    for name in SERVERS:
        rows.append(
            [
                name,
                mmm([s["rss"][name] for s in res["cold"] + res["warm"]], 1),
                f"{res['loaded']['peak'][name]:.1f}",
                f"{res['loaded']['after'][name]:.1f}",
            ]
        )
    print(
        f"\n{a.starts} cold + {a.starts} warm starts; load W={a.window} for {a.dur}s; load avg {load0}"
    )
    print(
        table(
            ["server", "idle RSS MB median (min–max)", "peak RSS MB under load", "after load"], rows
        )
    )
    print(
        table(
            ["start", "all READY s", "all healthy s", *(f"{n} CPU s to healthy" for n in SERVERS)],
            [
                [
                    k,
                    mmm([s["ready_s"] for s in res[k]], 2),
                    mmm([s["healthy_s"] for s in res[k]], 2),
                ]
                + [f"{med([s['start_cpu_s'][n] for s in res[k]]):.2f}" for n in SERVERS]
                for k in ("cold", "warm")
            ],
        )
    )
    path = save("footprint", res)
    print(f"results: {path}")
    idle_max = max(med([s["rss"][n] for s in res["cold"] + res["warm"]]) for n in SERVERS)
    peak_max = max(res["loaded"]["peak"].values())
    up = med([s["healthy_s"] for s in res["cold"]])
    up_warm = med([s["healthy_s"] for s in res["warm"]])
    print(
        f"SUMMARY footprint: idle RSS max {idle_max:.0f} MB/server ("
        + ", ".join(
            f"{n} {med([s['rss'][n] for s in res['cold'] + res['warm']]):.0f}" for n in SERVERS
        )
        + f"); peak under load {peak_max:.0f} MB; up healthy cold {up:.2f}s warm {up_warm:.2f}s; "
        f"targets ≤120 MB: {'holds' if idle_max <= 120 else 'misses'}, ≤3 s: {'holds' if up <= 3 else 'misses'}"
    )


if __name__ == "__main__":
    main()
