"""End-to-end throughput and latency of single-stage executions through the full mesh.

One execution = KAM CreateRequest + ExecuteRequest (→ orchestrator ExecutePipeline → durable
queue → Handshake/Process on the granulator, with its WatchProgress stream re-published) and
ends when the EXECUTION_SUCCEEDED event arrives on this client's WatchExecution stream; latency
is timed from CreateRequest to that moment. W loops run executions back to back (W in flight).
The mesh runs as real processes (the Supervisor behind `bitware up`: KAM, orchestrator, one
granulator, gateway; SQLite files), the master template is `course_standard` (one stage), and
clients are enterprise clients with a large budget, at most 16 loops per client (the tier's
limit of 50 running executions would otherwise refuse W=64).

Providers: `offline` (the built-in generator) and `openai` (the granulator's real openai-client
path against bench/fake_llm.py, a local OpenAI-compatible server that answers at once with a
valid course document, streamed).

    .venv/bin/python bench/e2e_throughput.py [--quick] [--reps 3] [--dur 5]
        [--windows 1,16,64] [--providers offline,openai] [--slots N] [--postgres] [--batched]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Awaitable
from typing import Any

from common import (
    CpuMeter,
    Mesh,
    MeshOptions,
    Result,
    client_for,
    load,
    loadavg,
    log,
    med,
    mmm,
    run_one,
    save,
    table,
)


async def measure(
    options: MeshOptions,
    windows: list[int],
    reps: int,
    dur: float,
    max_count: int,
    modes: tuple[bool, ...] = (False,),
) -> dict[bool, dict[int, list[dict[str, Any]]]]:
    """Runs per watch mode (False: one event per WatchExecution message; True: several, the
    request's `batched`), the modes taking turns within each rep and window on one mesh."""
    runs: dict[bool, dict[int, list[dict[str, Any]]]] = {m: {w: [] for w in windows} for m in modes}
    async with Mesh(options) as mesh:
        await load(8, 1.0, 40, lambda i: run_one(mesh, client_for(mesh, i)))  # warm-up
        pids = list(mesh.pids().values())
        for rep, w, batched in itertools.product(range(reps), windows, modes):

            def one(i: int, batched: bool = batched) -> Awaitable[Result]:
                return run_one(mesh, client_for(mesh, i), batched=batched)

            with CpuMeter(pids) as cpu:
                r = await load(w, dur, max_count, one)
            r["cpu_ms_per_exec"] = cpu.own_s / max(1, r["n"]) * 1e3
            r["foreign_cores"] = cpu.foreign_cores
            runs[batched][w].append(r)
            log(
                f"  {options.provider}{'/batched' if batched else ''} W={w} rep {rep + 1}:"
                f" {r['per_s']:.1f}/s p50 {r['p50_ms']:.1f}ms p99 {r['p99_ms']:.1f}ms"
                f" errors {r['errors']}" + (f" ({r['first_error']})" if r["errors"] else "")
            )
    return runs


def rows_of(label: str, runs: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for w, rs in runs.items():
        out.append(
            {
                "config": label,
                "window": w,
                "per_s": [r["per_s"] for r in rs],
                "p50_ms": [r["p50_ms"] for r in rs],
                "p99_ms": [r["p99_ms"] for r in rs],
                "errors": sum(r["errors"] for r in rs),
                "n": sum(r["n"] for r in rs),
                "cpu_ms": [r["cpu_ms_per_exec"] for r in rs],
                "foreign": [r["foreign_cores"] for r in rs],
            }
        )
    return out


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        table(
            [
                "config",
                "W",
                "execs/s",
                "p50 ms",
                "p99 ms",
                "ok",
                "errors",
                "CPU ms/exec",
                "foreign cores",
            ],
            [
                [
                    r["config"],
                    r["window"],
                    mmm(r["per_s"]),
                    mmm(r["p50_ms"]),
                    mmm(r["p99_ms"]),
                    r["n"],
                    r["errors"],
                    f"{med(r['cpu_ms']):.1f}",
                    f"{med(r['foreign']):.2f}",
                ]
                for r in rows
            ],
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dur", type=float, default=5.0)
    ap.add_argument("--max", type=int, default=3000, help="executions per run at most")
    ap.add_argument("--windows", default="1,16,64")
    ap.add_argument("--providers", default="offline,openai")
    ap.add_argument("--slots", type=int, default=0, help="granulator slots (0 = product default)")
    ap.add_argument("--postgres", action="store_true", help="every service on PostgreSQL")
    ap.add_argument(
        "--batched",
        action="store_true",
        help="also watch with WatchExecution's batched=true, interleaved with one event per message",
    )
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.reps, a.dur = 1, 2.0
    windows = [int(w) for w in a.windows.split(",")]
    load0 = loadavg()
    rows = []
    for provider in a.providers.split(","):
        options = MeshOptions(provider=provider, granulator_slots=a.slots, postgres=a.postgres)
        label = (
            provider
            + ("/pg" if a.postgres else "/sqlite")
            + (f"/slots={a.slots}" if a.slots else "")
        )
        log(f"{label}: starting the mesh")
        modes = (False, True) if a.batched else (False,)
        runs = asyncio.run(measure(options, windows, a.reps, a.dur, a.max, modes))
        for batched in modes:
            rows += rows_of(label + ("/batched" if batched else ""), runs[batched])
    print(f"\nreps={a.reps} dur={a.dur}s; median (min–max) over reps; load avg at start {load0}")
    print_rows(rows)
    path = save("e2e_throughput", {"reps": a.reps, "dur": a.dur, "rows": rows, "load": load0})
    print(f"results: {path}")
    parts = []
    for r in rows:
        if r["window"] == 1:
            parts.append(f"{r['config']} W=1 {med(r['per_s']):.1f}/s p50 {med(r['p50_ms']):.1f}ms")
        else:
            parts.append(f"W={r['window']} {med(r['per_s']):.1f}/s p99 {med(r['p99_ms']):.0f}ms")
    errors = sum(r["errors"] for r in rows)
    print("SUMMARY e2e_throughput: " + "; ".join(parts) + f"; errors {errors}")
    sys.exit(0)


if __name__ == "__main__":
    main()
