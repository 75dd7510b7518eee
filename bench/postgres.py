"""The end-to-end throughput of e2e_throughput.py with every service on PostgreSQL (one scratch
database `bench_<random>` on 127.0.0.1:5432, dropped afterwards), with 1 and with 2 orchestrator
replicas, plus the SQLite figure from the same run for comparison.

Two replicas = a second orchestrator process with the first one's environment (same database,
same KAM, same service credential) on another port. KAM talks to the first (its
BITWARE_ORCHESTRATOR_ADDRESS); the granulator registers with the first only (it takes one
BITWARE_ORCHESTRATOR_ADDRESS), which is enough for the second to see it, since the worker
registry is a table in the shared database; WatchExecution clients use the first. Both
dispatchers claim from the one queue (SELECT … FOR UPDATE SKIP LOCKED).

    .venv/bin/python bench/postgres.py [--quick] [--reps 3] [--dur 5] [--windows 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio

from common import MeshOptions, loadavg, log, med, save
from e2e_throughput import measure, print_rows, rows_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dur", type=float, default=5.0)
    ap.add_argument("--max", type=int, default=3000)
    ap.add_argument("--windows", default="1,16,64")
    ap.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison row")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.dur = 1, 2.0
    windows = [int(w) for w in a.windows.split(",")]
    load0 = loadavg()
    configs = [
        ("pg/1 orchestrator", MeshOptions(postgres=True)),
        ("pg/2 orchestrators", MeshOptions(postgres=True, extra_orchestrators=1)),
    ]
    if not a.no_sqlite:
        configs.insert(0, ("sqlite/1 orchestrator", MeshOptions()))
    rows = []
    for label, options in configs:
        log(f"{label}: starting the mesh")
        rows += rows_of(label, asyncio.run(measure(options, windows, a.reps, a.dur, a.max))[False])
    print(
        f"\nreps={a.reps} dur={a.dur}s; offline provider; median (min–max) over reps; load avg {load0}"
    )
    print_rows(rows)
    path = save("postgres", {"reps": a.reps, "dur": a.dur, "rows": rows, "load": load0})
    print(f"results: {path}")

    def best(label: str) -> str:
        rs = [r for r in rows if r["config"] == label]
        b = max(rs, key=lambda r: med(r["per_s"]))
        one = next(r for r in rs if r["window"] == 1)
        return (
            f"{label} best {med(b['per_s']):.1f}/s@W={b['window']} "
            f"(W=1 p50 {med(one['p50_ms']):.0f}ms)"
        )

    errors = sum(r["errors"] for r in rows)
    print(
        "SUMMARY postgres: " + "; ".join(best(label) for label, _ in configs) + f"; errors {errors}"
    )


if __name__ == "__main__":
    main()
