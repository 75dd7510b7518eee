"""Where the time goes: py-spy samples every server process of the mesh while a steady load of
end-to-end executions runs, and prints, per process, its CPU use and the functions (from our own
packages) with the largest share of samples — inclusive ("in this function or below") and self.

Needs py-spy (`.venv/bin/pip install py-spy`, not a project dependency). py-spy attaches with
ptrace; run as a user allowed to (root in the CI container).

    .venv/bin/python bench/profile_mesh.py [--quick] [--window 16] [--dur 20]
        [--provider offline|openai] [--top 25] [--postgres] [--gil] [--native]

Raw collapsed stacks are kept in $BENCH_RESULTS/profile-<process>.txt for flame graphs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from common import RESULTS, CpuMeter, Mesh, MeshOptions, client_for, load, run_one

OURS = (
    "bitware_core",
    "bitware_mesh",
    "kam_server",
    "orchestrator_server",
    "granulator_server",
    "gateway",
)


def pyspy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    # py-spy collapsed frame: "function (path/to/file.py:line)"
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for pkg in OURS:
        if f"/{pkg}/" in path:
            return f"{pkg}/{path.split(f'/{pkg}/', 1)[1]}:{func}"
    short = "/".join(path.split("/")[-2:])
    return f"{short}:{func}"


def summarize(path: Path, top: int) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    inclusive: collections.Counter[str] = collections.Counter()
    selfc: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [
            frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        for name in set(frames):
            inclusive[name] += n
        if frames:
            selfc[frames[-1]] += n
    ours = [(k, v / total) for k, v in inclusive.most_common() if k.split("/")[0] in OURS][:top]
    selfs = [(k, v / total) for k, v in selfc.most_common(top)]
    return total, ours, selfs


async def run(a: argparse.Namespace) -> None:
    spy = pyspy()
    options = MeshOptions(provider=a.provider, postgres=a.postgres)
    async with Mesh(options) as mesh:
        await load(8, 1.0, 40, lambda i: run_one(mesh, client_for(mesh, i)))
        pids = mesh.pids()
        RESULTS.mkdir(parents=True, exist_ok=True)
        procs = {}
        for name, pid in pids.items():
            out = RESULTS / f"profile-{name}.txt"
            procs[name] = (
                subprocess.Popen(
                    [
                        spy,
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(int(a.dur)),
                        "-r",
                        "200",
                        "-f",
                        "raw",
                        "-o",
                        str(out),
                        "--threads",
                        *(["--gil"] if a.gil else []),
                        # --native (C and Cython frames, e.g. grpc's) must pause the process
                        *(["--native"] if a.native else ["--nonblocking"]),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
                out,
            )
        await asyncio.sleep(0.5)
        with CpuMeter(list(pids.values())) as cpu:
            cpu0 = {n: __import__("common").proc_cpu_s(p) for n, p in pids.items()}
            r = await load(
                a.window, a.dur - 1.0, 100_000, lambda i: run_one(mesh, client_for(mesh, i))
            )
            cpu1 = {n: __import__("common").proc_cpu_s(p) for n, p in pids.items()}
        for p, _ in procs.values():
            await asyncio.to_thread(p.wait, 60)
    print(
        f"\nload W={a.window}: {r['per_s']:.1f} execs/s, p50 {r['p50_ms']:.0f}ms, "
        f"{r['n']} executions, errors {r['errors']}; foreign load {cpu.foreign_cores:.2f} cores"
    )
    for name, (_, out) in procs.items():
        used = cpu1[name] - cpu0[name]
        print(
            f"\n== {name}: {used:.1f} CPU-s, {used / max(1, r['n']) * 1e3:.1f} CPU-ms per execution"
        )
        if not out.exists():
            print("  (no profile: py-spy could not attach)")
            continue
        total, ours, selfs = summarize(out, a.top)
        print(f"  {total} samples (all threads, idle included). Inclusive, our code:")
        for k, v in ours:
            print(f"  {v * 100:5.1f}%  {k}")
        print("  Self (leaf frames):")
        for k, v in selfs[: a.top // 2]:
            print(f"  {v * 100:5.1f}%  {k}")
    print(f"SUMMARY profile_mesh: W={a.window} {r['per_s']:.1f} execs/s; profiles in {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--dur", type=float, default=20.0)
    ap.add_argument("--provider", default="offline")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--gil", action="store_true", help="sample only threads holding the GIL (CPU, not waits)"
    )
    ap.add_argument(
        "--native", action="store_true", help="include C/Cython frames (pauses while sampling)"
    )
    a = ap.parse_args()
    if a.quick:
        a.dur = 8.0
    asyncio.run(run(a))


if __name__ == "__main__":
    main()
