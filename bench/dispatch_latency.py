"""Dispatch latency: stage ready → worker accepted, p50/p95, from the execution's event log.

Method: every event of the log carries the orchestrator's own time of recording (`time`, from
one clock, microseconds). For each single-stage execution, dispatch latency is
`STAGE_ACCEPTED.time − STAGE_QUEUED.time`: from the moment the stage became ready (recorded in
the same transaction that created the execution) to the moment the orchestrator recorded the
worker's acceptance (after the Handshake answered). It splits into queue → claim
(STAGE_QUEUED → STAGE_OFFERED: the dispatcher noticed, claimed the lease and recorded the
offer) and offer → accept (the Handshake round trip to the granulator plus recording it). The
rest of the log is printed as the median gap between consecutive event types, which shows where
an execution's time goes.

Measured idle (W=1: one execution at a time) — the figure the target is about — and under load
(W=16), where queueing for the granulator's slots adds to it. Mesh as real processes (SQLite,
offline provider), like e2e_throughput.py.

    .venv/bin/python bench/dispatch_latency.py [--quick] [--reps 3] [--n 100] [--windows 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
from typing import Any

from common import (
    Mesh,
    MeshOptions,
    client_for,
    load,
    loadavg,
    log,
    med,
    mmm,
    pct,
    run_one,
    save,
    table,
)

from bitware.orchestrator.v1 import orchestrator_pb2

QUEUED, OFFERED, ACCEPTED = (
    orchestrator_pb2.EVENT_TYPE_STAGE_QUEUED,
    orchestrator_pb2.EVENT_TYPE_STAGE_OFFERED,
    orchestrator_pb2.EVENT_TYPE_STAGE_ACCEPTED,
)


def t(event: orchestrator_pb2.ExecutionEvent) -> float:
    return event.time.seconds + event.time.nanos / 1e9


async def measure(windows: list[int], reps: int, n: int, postgres: bool) -> dict[str, Any]:
    out: dict[str, Any] = {w: [] for w in windows}
    gaps: dict[str, list[float]] = collections.defaultdict(list)
    async with Mesh(MeshOptions(postgres=postgres)) as mesh:
        await load(8, 1.0, 40, lambda i: run_one(mesh, client_for(mesh, i)))
        for rep in range(reps):
            for w in windows:
                samples: dict[str, list[float]] = {"total": [], "claim": [], "handshake": []}

                async def one(i: int, w: int = w, samples: dict[str, list[float]] = samples) -> Any:
                    r = await run_one(mesh, client_for(mesh, i), keep=True)
                    if r.ok:
                        first = {}
                        for ev, _, _ in r.events:
                            first.setdefault(ev.type, ev)
                        if QUEUED in first and OFFERED in first and ACCEPTED in first:
                            samples["total"].append(t(first[ACCEPTED]) - t(first[QUEUED]))
                            samples["claim"].append(t(first[OFFERED]) - t(first[QUEUED]))
                            samples["handshake"].append(t(first[ACCEPTED]) - t(first[OFFERED]))
                        if w == 1:
                            evs = [e for e, _, _ in r.events]
                            for a, b in itertools.pairwise(evs):
                                name = (
                                    orchestrator_pb2.EventType.Name(a.type).removeprefix(
                                        "EVENT_TYPE_"
                                    )
                                    + "→"
                                    + orchestrator_pb2.EventType.Name(b.type).removeprefix(
                                        "EVENT_TYPE_"
                                    )
                                )
                                gaps[name].append(t(b) - t(a))
                    return r

                r = await load(w, 60.0, n, one)
                res = {
                    "n": len(samples["total"]),
                    "errors": r["errors"],
                    **{f"{k}_p50_ms": pct(v, 50) * 1e3 for k, v in samples.items()},
                    **{f"{k}_p95_ms": pct(v, 95) * 1e3 for k, v in samples.items()},
                }
                out[w].append(res)
                log(
                    f"  W={w} rep {rep + 1}: dispatch p50 {res['total_p50_ms']:.1f}ms "
                    f"p95 {res['total_p95_ms']:.1f}ms (n={res['n']})"
                )
    out["gaps"] = {k: (med(v) * 1e3, len(v)) for k, v in gaps.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=100, help="executions per window per rep")
    ap.add_argument("--windows", default="1,16")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.n = 1, 30
    windows = [int(w) for w in a.windows.split(",")]
    load0 = loadavg()
    res = asyncio.run(measure(windows, a.reps, a.n, a.postgres))
    rows = []
    for w in windows:
        rs = res[w]
        rows.append(
            [w, sum(r["n"] for r in rs)]
            + [
                mmm([r[f"{k}_{p}_ms"] for r in rs], 2)
                for k in ("total", "claim", "handshake")
                for p in ("p50", "p95")
            ]
        )
    print(
        f"\nreps={a.reps}, {a.n} executions per window; median (min–max) over reps; load avg {load0}"
    )
    print(
        table(
            [
                "W",
                "n",
                "ready→accepted p50",
                "p95",
                "queued→offered p50",
                "p95",
                "offered→accepted p50",
                "p95",
            ],
            rows,
        )
    )
    print("\nwhere an idle (W=1) execution's time goes: median gap between consecutive events")
    print(
        table(
            ["events", "median ms", "n"], [[k, f"{v[0]:.2f}", v[1]] for k, v in res["gaps"].items()]
        )
    )
    path = save(
        "dispatch_latency",
        {"reps": a.reps, "n": a.n, "results": {str(k): v for k, v in res.items()}},
    )
    print(f"results: {path}")
    idle = res[windows[0]]
    parts = [
        f"W={w} p50 {med([r['total_p50_ms'] for r in res[w]]):.1f}ms p95 {med([r['total_p95_ms'] for r in res[w]]):.1f}ms"
        for w in windows
    ]
    print(
        "SUMMARY dispatch_latency: stage ready→accepted "
        + "; ".join(parts)
        + f" (target p95 ≤10ms idle: {'holds' if med([r['total_p95_ms'] for r in idle]) <= 10 else 'misses'})"
    )


if __name__ == "__main__":
    main()
