"""Ours and the references, interleaved in one run, and the ratios against the targets
(issue 7's, as revised by issue 14).

Each round runs, one after the other: the peer (Celery 5.7 + Redis chain of 2 no-op tasks,
celery_chain.py in the reference folder), our e2e_throughput.py on the full offline provider and
on the no-op worker (bench/noop_worker.py: the mesh's own orchestration cost, like for like with
Celery's no-op tasks), SQLite, W=1/16/64; the ceiling (the toy gRPC pipeline, toy_pipeline.py
--no-pg: no DB / SQLite); our dispatch_latency.py, progress_latency.py and slow_model.py (120
executions at once against a model that answers in 2 s). footprint.py runs once after the
rounds. Figures are the medians over rounds; each ratio compares figures from the same run.

The reference folder is `../shared/bench-reference` from the project root (or
$BENCH_REFERENCE). It needs its scratch venv once: `bash <reference>/setup.sh` (makes
$PERFRES/venv, default /tmp/perfres/venv; may apt-install redis-server).

    .venv/bin/python bench/side_by_side.py [--quick] [--rounds 3] [--dur 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import HERE, RESULTS, ROOT, loadavg, log, med, table

REF = Path(os.environ.get("BENCH_REFERENCE", ROOT.parent / "shared" / "bench-reference"))
PERFRES = Path(os.environ.get("PERFRES", "/tmp/perfres"))
REF_PY = PERFRES / "venv" / "bin" / "python"


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    log(f"$ {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    summary = [line for line in p.stdout.splitlines() if line.startswith("SUMMARY")]
    if p.returncode != 0 or not summary:
        log(p.stdout[-2000:] + p.stderr[-3000:])
        raise RuntimeError(f"{cmd[1]} failed (exit {p.returncode})")
    log(f"  {summary[-1]}  [{time.perf_counter() - t0:.0f}s]")
    return summary[-1]


def jload(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dur", type=float, default=4.0, help="seconds per throughput run")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.dur = 1, 2.0
    if not (REF / "celery_chain.py").exists():
        sys.exit(f"no reference folder at {REF}: set BENCH_REFERENCE to it")
    if not REF_PY.exists():
        sys.exit(f"no reference venv at {REF_PY}: run `bash {REF}/setup.sh` once")
    ours = [sys.executable]
    dur = str(a.dur)
    load0 = loadavg()
    f: dict[str, list[float]] = {
        k: []
        for k in (
            "celery_best",
            "celery_w",
            "celery_p50",
            "toy_none",
            "toy_sqlite",
            "toy_sqlite_p50",
            "ours_best",
            "ours_w",
            "ours_p50",
            "ours_w64",
            "noop_best",
            "noop_w",
            "noop_p50",
            "slow_per_s",
            "slow_in_flight",
            "dispatch_p95",
            "dispatch_p50",
            "progress_grpc_p99",
            "progress_sse_p99",
        )
    }
    summaries: list[str] = []
    for rnd in range(a.rounds):
        log(f"--- round {rnd + 1}/{a.rounds}")
        summaries.append(run([str(REF_PY), "celery_chain.py", "--reps", "1", "--dur", dur], REF))
        c = jload(PERFRES / "results" / "celery_chain.json")
        best = max(c["rows"], key=lambda r: r["rate"]["median"])
        f["celery_best"].append(best["rate"]["median"])
        f["celery_w"].append(best["window"])
        f["celery_p50"].append(next(r for r in c["rows"] if r["window"] == 1)["p50_ms"]["median"])

        summaries.append(
            run(
                ours
                + ["e2e_throughput.py", "--reps", "1", "--dur", dur, "--providers", "offline,noop"],
                HERE,
            )
        )
        e = jload(RESULTS / "e2e_throughput.json")
        for name, provider in (("ours", "offline"), ("noop", "noop")):
            rows_ = [r for r in e["rows"] if r["config"].startswith(provider + "/")]
            best = max(rows_, key=lambda r: med(r["per_s"]))
            f[f"{name}_best"].append(med(best["per_s"]))
            f[f"{name}_w"].append(best["window"])
            f[f"{name}_p50"].append(med(next(r for r in rows_ if r["window"] == 1)["p50_ms"]))
        f["ours_w64"].append(
            med(
                next(r for r in e["rows"] if r["config"] == "offline/sqlite" and r["window"] == 64)[
                    "per_s"
                ]
            )
        )

        summaries.append(
            run(
                [
                    str(REF_PY),
                    "toy_pipeline.py",
                    "--reps",
                    "1",
                    "--dur",
                    str(max(1.0, a.dur / 2)),
                    "--no-pg",
                ],
                REF,
            )
        )
        t = jload(PERFRES / "results" / "toy_pipeline.json")
        f["toy_none"].append(max(r["rate"]["median"] for r in t["rows"] if r["db"] == "none"))
        f["toy_sqlite"].append(max(r["rate"]["median"] for r in t["rows"] if r["db"] == "sqlite"))
        f["toy_sqlite_p50"].append(
            next(r for r in t["rows"] if r["db"] == "sqlite" and r["n"] == 1)["p50_ms"]["median"]
        )

        summaries.append(
            run(ours + ["dispatch_latency.py", "--reps", "1", "--n", "60", "--windows", "1"], HERE)
        )
        d = jload(RESULTS / "dispatch_latency.json")["results"]["1"][0]
        f["dispatch_p95"].append(d["total_p95_ms"])
        f["dispatch_p50"].append(d["total_p50_ms"])

        summaries.append(run(ours + ["progress_latency.py", "--reps", "1", "--n", "10"], HERE))
        p = jload(RESULTS / "progress_latency.json")["results"]
        f["progress_grpc_p99"].append(p["grpc"][0]["p99_ms"])
        f["progress_sse_p99"].append(p["sse"][0]["p99_ms"])

        summaries.append(run(ours + ["slow_model.py", "--n", "120", "--delay", "2"], HERE))
        slow = jload(RESULTS / "slow_model.json")["runs"][0]
        f["slow_per_s"].append(slow["per_s"])
        f["slow_in_flight"].append(slow["most_in_flight"])

    log("--- footprint")
    summaries.append(run(ours + ["footprint.py", "--starts", "3", "--dur", "8"], HERE))
    fp = jload(RESULTS / "footprint.json")
    servers = list(fp["cold"][0]["rss"])
    rss = {n: med([s["rss"][n] for s in fp["cold"] + fp["warm"]]) for n in servers}
    up_cold = med([s["healthy_s"] for s in fp["cold"]])
    up_warm = med([s["healthy_s"] for s in fp["warm"]])

    m = {k: med(v) for k, v in f.items()}
    rows = [
        [
            "slow model (2 s), 120 at once: execs/s",
            f"{m['slow_per_s']:.1f}",
            f"{m['slow_per_s'] / 25:.2f}× target",
            "≥ 25/s",
            m["slow_per_s"] >= 25,
        ],
        [
            "slow model: most model calls in flight",
            f"{m['slow_in_flight']:.0f}",
            f"{m['slow_in_flight'] / 100:.2f}× target",
            "≥ 100",
            m["slow_in_flight"] >= 100,
        ],
        [
            "no-op worker: execs/s vs Celery chain",
            f"{m['noop_best']:.1f} vs {m['celery_best']:.0f}",
            f"{m['noop_best'] / m['celery_best']:.3f}×",
            "≥ 1×",
            m["noop_best"] / m["celery_best"] >= 1,
        ],
        [
            "no-op worker: idle e2e p50 vs Celery's",
            f"{m['noop_p50']:.1f} vs {m['celery_p50']:.2f} ms",
            f"{m['noop_p50'] / m['celery_p50']:.1f}×",
            "≤ 1×",
            m["noop_p50"] / m["celery_p50"] <= 1,
        ],
        [
            "offline provider: execs/s vs Celery chain",
            f"{m['ours_best']:.1f} vs {m['celery_best']:.0f}",
            f"{m['ours_best'] / m['celery_best']:.3f}×",
            "≥ 0.5×",
            m["ours_best"] / m["celery_best"] >= 0.5,
        ],
        [
            "offline provider: execs/s vs toy pipeline (SQLite)",
            f"{m['ours_best']:.1f} vs {m['toy_sqlite']:.0f}",
            f"{m['ours_best'] / m['toy_sqlite']:.3f}×",
            "≥ 0.5×",
            m["ours_best"] / m["toy_sqlite"] >= 0.5,
        ],
        [
            "(info) vs toy pipeline, no DB",
            f"{m['ours_best']:.1f} vs {m['toy_none']:.0f}",
            f"{m['ours_best'] / m['toy_none']:.3f}×",
            "",
            "",
        ],
        [
            "(info) offline idle e2e p50 vs Celery's",
            f"{m['ours_p50']:.1f} vs {m['celery_p50']:.2f} ms",
            f"{m['ours_p50'] / m['celery_p50']:.1f}×",
            "",
            "",
        ],
        [
            "(info) idle p50 vs toy (SQLite)",
            f"{m['ours_p50']:.1f} vs {m['toy_sqlite_p50']:.2f} ms",
            f"{m['ours_p50'] / m['toy_sqlite_p50']:.1f}×",
            "",
            "",
        ],
        [
            "dispatch p95 (idle)",
            f"{m['dispatch_p95']:.1f} ms (p50 {m['dispatch_p50']:.1f})",
            f"{m['dispatch_p95'] / 10:.1f}× target",
            "≤ 10 ms",
            m["dispatch_p95"] <= 10,
        ],
        [
            "progress p99 → WatchExecution",
            f"{m['progress_grpc_p99']:.1f} ms",
            f"{m['progress_grpc_p99'] / 50:.2f}× target",
            "≤ 50 ms",
            m["progress_grpc_p99"] <= 50,
        ],
        [
            "progress p99 → SSE",
            f"{m['progress_sse_p99']:.1f} ms",
            f"{m['progress_sse_p99'] / 50:.2f}× target",
            "≤ 50 ms",
            m["progress_sse_p99"] <= 50,
        ],
        *(
            [f"idle RSS {n}", f"{v:.0f} MB", f"{v / 120:.2f}× target", "≤ 120 MB", v <= 120]
            for n, v in rss.items()
        ),
        [
            "bitware up → all healthy (cold)",
            f"{up_cold:.2f} s (warm {up_warm:.2f})",
            f"{up_cold / 3:.1f}× target",
            "≤ 3 s",
            up_cold <= 3,
        ],
    ]
    print(
        f"\n{a.rounds} interleaved rounds, {a.dur}s runs; medians over rounds; load avg at start {load0}"
    )
    print(
        table(
            ["figure", "ours vs reference", "ratio", "target", "holds"],
            [[*r[:4], "yes" if r[4] is True else ("NO" if r[4] is False else "")] for r in rows],
        )
    )
    print("\nper round: " + json.dumps({k: [round(x, 2) for x in v] for k, v in f.items()}))
    print("\n".join(summaries))
    (RESULTS / "side_by_side.json").write_text(
        json.dumps(
            {"figures": f, "rss": rss, "up_cold": up_cold, "up_warm": up_warm, "load": load0},
            indent=2,
        )
    )
    held = sum(1 for r in rows if r[4] is True)
    total = sum(1 for r in rows if r[4] in (True, False))
    print(
        f"SUMMARY side_by_side: slow model {m['slow_per_s']:.1f} execs/s, {m['slow_in_flight']:.0f} "
        f"calls in flight; no-op {m['noop_best']:.1f} execs/s = {m['noop_best'] / m['celery_best']:.3f}× "
        f"Celery, idle p50 {m['noop_p50']:.1f}ms = {m['noop_p50'] / m['celery_p50']:.1f}×; "
        f"offline {m['ours_best']:.1f} execs/s = {m['ours_best'] / m['celery_best']:.3f}× Celery "
        f"({m['celery_best']:.0f}/s), {m['ours_best'] / m['toy_sqlite']:.3f}× toy/SQLite ({m['toy_sqlite']:.0f}/s); "
        f"idle p50 {m['ours_p50']:.0f}ms = {m['ours_p50'] / m['celery_p50']:.0f}× Celery's; dispatch p95 "
        f"{m['dispatch_p95']:.0f}ms; progress p99 {m['progress_grpc_p99']:.0f}/{m['progress_sse_p99']:.0f}ms; "
        f"RSS max {max(rss.values()):.0f}MB; up {up_cold:.1f}s; targets held {held}/{total}"
    )


if __name__ == "__main__":
    main()
