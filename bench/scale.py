"""Scale curve: end-to-end throughput with 1, 2 and 4 granulators and 1 and 2 orchestrators, every
service on PostgreSQL, in one table, with the CPU each kind of process used (what bounds the row).

Method: for each configuration a mesh of real processes (the Supervisor behind
`bitware up --postgres --granulators N`, a scratch database `bench_<random>` on 127.0.0.1:5432,
dropped afterwards; a second orchestrator is started by hand from the first one's environment,
as bench/postgres.py does). W loops run single-stage executions back to back (KAM CreateRequest
+ ExecuteRequest, until EXECUTION_SUCCEEDED arrives on WatchExecution) for `--dur` seconds after
a warm-up. The configurations take turns, `--reps` rounds, so the machine's load falls on all
alike; each figure is the median over rounds. CPU is read from /proc for each process (cores =
CPU seconds / wall seconds), PostgreSQL's backends of the mesh's database included (found in
pg_stat_activity); "rest of machine" is everything else busy meanwhile (other work on a shared
machine).

    .venv/bin/python bench/scale.py [--reps 2] [--dur 6] [--window 32]
        [--granulators 1,2,4] [--orchestrators 1,2] [--provider offline|openai --delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from common import (
    CLK_TCK,
    PG_ADMIN_URL,
    Mesh,
    MeshOptions,
    _busy_s,
    client_for,
    load,
    loadavg,
    log,
    med,
    proc_cpu_s,
    run_one,
    save,
    table,
)

KINDS = ("orchestrator", "granulator", "kam", "gateway", "postgres")


def backends(database: str) -> list[int]:
    """The process ids of PostgreSQL's backends serving `database` (the mesh's pools keep
    their connections, so these are the ones that do its work)."""
    import psycopg

    with psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [pid for (pid,) in rows]


def kind_of(name: str) -> str:
    return next(k for k in KINDS if name.startswith(k))


async def one(options: MeshOptions, window: int, dur: float) -> dict[str, Any]:
    async with Mesh(options) as mesh:
        await load(8, 2.0, 60, lambda i: run_one(mesh, client_for(mesh, i)))  # warm-up
        pids = mesh.pids()
        pids |= {f"postgres {pid}": pid for pid in backends(mesh.pg_name)}
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        me0, busy0, t0 = proc_cpu_s(os.getpid()), _busy_s(), time.perf_counter()
        r = await load(window, dur, 100_000, lambda i: run_one(mesh, client_for(mesh, i)))
        wall = time.perf_counter() - t0
        cores: dict[str, float] = dict.fromkeys(KINDS, 0.0)
        busiest = ("", 0.0)
        for name, pid in pids.items():
            used = (proc_cpu_s(pid) - cpu0[name]) / wall
            cores[kind_of(name)] += used
            busiest = max(busiest, (name, used), key=lambda b: b[1])
        cores["bench client"] = (proc_cpu_s(os.getpid()) - me0) / wall
        ours = sum(cores.values())
        cores["rest of machine"] = max(0.0, (_busy_s() - busy0) / wall - ours)
    n = max(1, r["n"])
    return {
        **r,
        "cores": cores,
        "cpu_ms_per_exec": ours * wall / n * 1e3,
        "busiest": busiest[0].split(" ")[0],
        "busiest_ms_per_exec": busiest[1] * wall / n * 1e3,
    }


def bound(row: dict[str, Any]) -> str:
    """What bounds the row: the CPU an execution needs against the CPU the run got. Two cores
    allow 2,000 / (CPU ms per execution) executions/s; one process (one event loop, one core
    at most) allows 1,000 / (its CPU ms per execution)."""
    machine = 2000 / row["cpu_ms"]
    single = 1000 / row["busiest_ms"]
    got = sum(v for k, v in row["cores"].items() if k != "rest of machine")
    limit = (
        f"2 cores allow {machine:.0f}/s"
        if machine <= single
        else f"{row['busiest']} (one core) allows {single:.0f}/s"
    )
    return (
        f"CPU: {row['cpu_ms']:.0f} ms/exec, {limit}; we got {got:.2f} cores,"
        f" the rest of the machine {row['cores']['rest of machine']:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dur", type=float, default=6.0)
    ap.add_argument("--window", type=int, default=32, help="executions in flight")
    ap.add_argument("--granulators", default="1,2,4")
    ap.add_argument("--orchestrators", default="1,2")
    ap.add_argument("--provider", default="offline")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds the fake LLM takes")
    a = ap.parse_args()
    configs = [
        (g, o)
        for o in map(int, a.orchestrators.split(","))
        for g in map(int, a.granulators.split(","))
    ]
    load0 = loadavg()
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    for rep in range(a.reps):
        for g, o in configs:
            options = MeshOptions(
                provider=a.provider,
                llm_delay=a.delay,
                postgres=True,
                granulators=g,
                extra_orchestrators=o - 1,
                clients=max(4, a.window // 8),
            )
            r = await_one(options, a.window, a.dur)
            runs[(g, o)].append(r)
            log(
                f"rep {rep + 1} granulators={g} orchestrators={o}: {r['per_s']:.1f}/s "
                f"p50 {r['p50_ms']:.0f} ms, errors {r['errors']}, load {loadavg()}"
            )
    rows = []
    for (g, o), rs in runs.items():
        cores = {k: med([r["cores"][k] for r in rs]) for k in rs[0]["cores"]}
        row = {
            "granulators": g,
            "orchestrators": o,
            "per_s": [r["per_s"] for r in rs],
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "cpu_ms": med([r["cpu_ms_per_exec"] for r in rs]),
            "busiest": rs[0]["busiest"],
            "busiest_ms": med([r["busiest_ms_per_exec"] for r in rs]),
            "cores": cores,
        }
        row["bound"] = bound(row)
        rows.append(row)
    print(
        f"\nPostgreSQL, provider {a.provider}"
        + (f" ({a.delay}s per call)" if a.delay else "")
        + f", W={a.window}, {a.dur}s × {a.reps} rounds (configurations interleaved);"
        f" load avg at start {load0}, end {loadavg()}; {os.cpu_count()} CPUs, CLK_TCK {CLK_TCK}"
    )
    print(
        table(
            [
                "granulators",
                "orchestrators",
                "execs/s (rounds)",
                "p50 ms",
                "errors",
                "cores: orch / gran / kam / PG / bench / rest",
                "CPU ms/exec (ours, PG included)",
                "bounded by",
            ],
            [
                [
                    r["granulators"],
                    r["orchestrators"],
                    f"{med(r['per_s']):.1f} ({', '.join(f'{x:.1f}' for x in r['per_s'])})",
                    f"{r['p50_ms']:.0f}",
                    r["errors"],
                    " / ".join(
                        f"{r['cores'][k]:.2f}"
                        for k in (
                            "orchestrator",
                            "granulator",
                            "kam",
                            "postgres",
                            "bench client",
                            "rest of machine",
                        )
                    ),
                    f"{r['cpu_ms']:.0f}",
                    r["bound"],
                ]
                for r in rows
            ],
        )
    )
    path = save("scale", {"args": vars(a), "load": load0, "rows": rows})
    print(f"results: {path}")
    base = med(rows[0]["per_s"])
    print(
        "SUMMARY scale: "
        + "; ".join(
            f"{r['granulators']}g/{r['orchestrators']}o {med(r['per_s']):.1f}/s"
            f" (×{med(r['per_s']) / base:.2f})"
            for r in rows
        )
        + f"; errors {sum(r['errors'] for r in rows)}"
    )


def await_one(options: MeshOptions, window: int, dur: float) -> dict[str, Any]:
    return asyncio.run(one(options, window, dur))


if __name__ == "__main__":
    main()
