"""The LLM-bound regime: a model that takes its time, many executions at once, one granulator.

Starts the mesh as real processes (`bitware up`'s Supervisor) with the granulator on the
`openai` provider against bench/fake_llm.py answering every call after `--delay` seconds, then
submits `--n` executions at once through KAM (CreateRequest + ExecuteRequest, then
WatchExecution to the end), spread over `--clients` enterprise clients. Prints:

- executions/s: n / (first submit → last terminal event);
- the most model calls in flight, counted by the fake server (a granulator that waits on the
  model for one call at a time per slot shows its slot count here);
- end-to-end p50/p99, and the same minus the model time (`llm_calls` × delay of each
  execution): the mesh's own overhead, queueing in the mesh included;
- where that overhead goes (medians, from the orchestrator's event times): submit → queued
  (KAM's CreateRequest + ExecuteRequest and ExecutePipeline), queued → accepted (claim,
  Handshake), accepted → stage succeeded minus the model time (the call, checking, scoring,
  storing, recording), stage succeeded → the client sees the end;
- CPU milliseconds per execution of our processes (the mesh's servers and the bench's clients),
  and of each (the fake model's too, not counted in ours), and the load average.

    .venv/bin/python bench/slow_model.py [--n 120] [--delay 2] [--clients 8] [--reps 1]
                                         [--slots 0]   # BITWARE_MAX_CONCURRENT_JOBS; 4 = before
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from common import (
    CpuMeter,
    Mesh,
    MeshOptions,
    Result,
    client_for,
    loadavg,
    log,
    mmm,
    pct,
    proc_cpu_s,
    run_one,
    save,
    table,
)

from bitware.orchestrator.v1 import orchestrator_pb2

PHASES = ("submit → queued", "queued → accepted", "accepted → stage done − model", "done → client")


def phases(r: Result, delay: float) -> list[float]:
    """Seconds of one execution's phases (see PHASES); the orchestrator's clock and ours are the
    machine's one clock."""
    at: dict[int, float] = {}
    for event, _, _ in r.events:
        at.setdefault(event.type, event.time.seconds + event.time.nanos / 1e9)
    seen_end = r.events[-1][2]
    submitted = seen_end - r.latency
    model = r.events[-1][0].usage.llm_calls * delay
    queued = at[orchestrator_pb2.EVENT_TYPE_EXECUTION_QUEUED]
    accepted = at[orchestrator_pb2.EVENT_TYPE_STAGE_ACCEPTED]
    done = at[orchestrator_pb2.EVENT_TYPE_STAGE_SUCCEEDED]
    return [queued - submitted, accepted - queued, done - accepted - model, seen_end - done]


async def burst(mesh: Mesh, n: int, delay: float) -> dict[str, Any]:
    """`n` executions submitted at once; waits for all of them to end."""
    assert mesh.fake is not None
    pids = {**mesh.pids(), "bench": os.getpid(), "fake model": mesh.fake.proc.pid}
    before = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    with CpuMeter(list(mesh.pids().values())) as cpu:
        t0 = time.perf_counter()
        results: list[Result] = await asyncio.wait_for(
            asyncio.gather(*(run_one(mesh, client_for(mesh, i), keep=True) for i in range(n))),
            timeout=600,
        )
        elapsed = time.perf_counter() - t0
    stats = mesh.fake.stats()
    done = [r for r in results if r.ok]
    per_process = {
        name: (proc_cpu_s(pid) - before[name]) / max(1, len(done)) * 1e3
        for name, pid in pids.items()
    }
    latency = [r.latency for r in done]
    overhead = [r.latency - r.events[-1][0].usage.llm_calls * delay for r in done]
    errors = [r.error for r in results if not r.ok]
    return {
        "n": n,
        "ok": len(done),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "per_s": len(done) / elapsed,
        "elapsed_s": elapsed,
        "most_in_flight": stats["most_in_flight"],
        "model_calls": stats["requests"],
        "p50_ms": pct(latency, 50) * 1e3,
        "p99_ms": pct(latency, 99) * 1e3,
        "overhead_p50_ms": pct(overhead, 50) * 1e3,
        "overhead_p99_ms": pct(overhead, 99) * 1e3,
        "phases_p50_ms": {
            name: pct([phases(r, delay)[i] for r in done], 50) * 1e3
            for i, name in enumerate(PHASES)
        },
        "cpu_ms_per_exec": cpu.own_s / max(1, len(done)) * 1e3,
        "cpu_ms_by_process": per_process,
        "foreign_cores": cpu.foreign_cores,
    }


async def main(a: argparse.Namespace) -> None:
    load0 = loadavg()
    runs: list[dict[str, Any]] = []
    for rep in range(a.reps):
        options = MeshOptions(
            provider="openai", llm_delay=a.delay, clients=a.clients, granulator_slots=a.slots
        )
        async with Mesh(options) as mesh:
            log(f"rep {rep + 1}/{a.reps}: {a.n} executions at once, model answers in {a.delay}s")
            runs.append(await burst(mesh, a.n, a.delay))
            log(f"  {runs[-1]}")
    print(
        f"\n{a.n} executions at once, {a.clients} clients, model delay {a.delay}s, 1 granulator; "
        f"{a.reps} rep(s), median (min–max); load avg at start {load0}"
    )
    rows = [
        ["executions/s", mmm([r["per_s"] for r in runs])],
        ["succeeded / errors", f"{sum(r['ok'] for r in runs)} / {sum(r['errors'] for r in runs)}"],
        ["most model calls in flight", mmm([r["most_in_flight"] for r in runs], 0)],
        ["model calls made", mmm([r["model_calls"] for r in runs], 0)],
        [
            "end-to-end p50 / p99 ms",
            f"{mmm([r['p50_ms'] for r in runs], 0)} / {mmm([r['p99_ms'] for r in runs], 0)}",
        ],
        [
            "minus model time p50 / p99 ms",
            f"{mmm([r['overhead_p50_ms'] for r in runs], 0)} / "
            f"{mmm([r['overhead_p99_ms'] for r in runs], 0)}",
        ],
        *(
            [f"  {name} p50 ms", mmm([r["phases_p50_ms"][name] for r in runs], 0)]
            for name in PHASES
        ),
        ["CPU ms per execution (ours)", mmm([r["cpu_ms_per_exec"] for r in runs], 0)],
        *(
            [f"  {name}", mmm([r["cpu_ms_by_process"][name] for r in runs], 1)]
            for name in runs[0]["cpu_ms_by_process"]
        ),
        ["foreign load, cores", mmm([r["foreign_cores"] for r in runs], 2)],
    ]
    print(table(["figure", "value"], rows))
    if any(r["first_error"] for r in runs):
        print("first error: " + next(r["first_error"] for r in runs if r["first_error"]))
    save("slow_model", {"args": vars(a), "load_at_start": load0, "runs": runs})
    per_s = sorted(r["per_s"] for r in runs)[len(runs) // 2]
    most = max(r["most_in_flight"] for r in runs)
    print(
        f"SUMMARY slow_model: {per_s:.1f} executions/s, {most} model calls in flight at most, "
        f"overhead p50 {runs[0]['overhead_p50_ms']:.0f} ms p99 {runs[0]['overhead_p99_ms']:.0f} ms "
        f"(n={a.n}, delay={a.delay}s, load {load0})"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120, help="executions submitted at once")
    ap.add_argument("--delay", type=float, default=2.0, help="seconds the model takes per call")
    ap.add_argument("--clients", type=int, default=8, help="clients the executions come from")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--slots", type=int, default=0, help="granulator slots (0: the default)")
    asyncio.run(main(ap.parse_args()))
