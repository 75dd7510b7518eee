"""Drain: N (default 1,000) queued single-stage executions complete with no error; time and rate.

Method: mesh as real processes (SQLite, offline provider, product defaults). The granulator is
first set draining (admin DeregisterWorker drain=true: it gets no offers), then N requests are
created and executed through KAM (25 enterprise clients × 40, under the tier's 50-running
limit), so that all N executions sit in the orchestrator's durable queue (GetQueue checks the
depth). Then the granulator process is restarted (a drained worker stays out for good, by
design, so the bench starts a fresh one, as an operator would) and the clock starts when it is
registered and healthy again; it stops when GetQueue shows nothing queued or running;
then every execution is read back (ListExecutions) and must be SUCCEEDED, and KAM must have
settled every request. No WatchExecution streams are open: this is the queue and the worker.

    .venv/bin/python bench/drain.py [--quick] [--n 1000] [--reps 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from common import Mesh, MeshOptions, loadavg, log, med, mmm, save, submit, table

from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, registry_pb2, registry_pb2_grpc

PER_CLIENT = 40


async def queue(mesh: Mesh) -> orchestrator_pb2.GetQueueResponse:
    return await mesh.orchestrator.GetQueue(
        orchestrator_pb2.GetQueueRequest(), metadata=mesh.admin, timeout=10
    )


async def one_rep(n: int, limit: float) -> dict[str, Any]:
    clients = -(-n // PER_CLIENT)
    async with Mesh(MeshOptions(clients=clients)) as mesh:
        registry = registry_pb2_grpc.WorkerRegistryServiceStub(mesh.orc_channel)
        gran = next(c for c in mesh.supervisor.children if c.name == "granulator-1")
        await registry.DeregisterWorker(
            registry_pb2.DeregisterWorkerRequest(worker_id="granulator-1", drain=True),
            metadata=mesh.admin,
            timeout=10,
        )
        # A draining worker that goes idle is deregistered by the orchestrator's housekeeping,
        # and the granulator then registers again on its next heartbeat: keep it draining.
        holding = asyncio.Event()

        async def hold() -> None:
            while not holding.is_set():
                await registry.DeregisterWorker(
                    registry_pb2.DeregisterWorkerRequest(worker_id="granulator-1", drain=True),
                    metadata=mesh.admin,
                    timeout=10,
                )
                await asyncio.sleep(0.2)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0.5)
        # queue N executions
        t_sub = time.perf_counter()
        ids: list[str] = []
        todo = list(range(n))

        async def submitter() -> None:
            while todo:
                i = todo.pop()
                ids.append(await submit(mesh, mesh.clients[i // PER_CLIENT]))

        await asyncio.wait_for(asyncio.gather(*(submitter() for _ in range(16))), 600)
        submit_s = time.perf_counter() - t_sub
        depth = (await queue(mesh)).total_depth
        log(f"  queued {len(ids)} executions in {submit_s:.1f}s; queue depth {depth}")
        # release: a fresh granulator (the Supervisor restarts the one killed here) registers
        # itself; time the drain from the moment it is healthy
        holding.set()
        await holder
        assert gran.process is not None
        gran.process.kill()
        while True:
            workers = await registry.ListWorkers(
                registry_pb2.ListWorkersRequest(), metadata=mesh.admin, timeout=10
            )
            state = next(w.state for w in workers.workers if w.worker_id == "granulator-1")
            if state == registry_pb2.WORKER_STATE_HEALTHY:
                break
            await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        deadline = t0 + limit
        last_log = t0
        while time.perf_counter() < deadline:
            q = await queue(mesh)
            if q.total_depth == 0 and q.running == 0 and q.retry_waiting == 0:
                break
            if time.perf_counter() - last_log > 10:
                last_log = time.perf_counter()
                log(
                    f"    {time.perf_counter() - t0:.0f}s: depth {q.total_depth}, running {q.running}"
                )
            await asyncio.sleep(0.05)
        drain_s = time.perf_counter() - t0
        # read every execution back
        statuses: dict[str, int] = {}
        idset = set(ids)
        token = ""
        while True:
            page = await mesh.orchestrator.ListExecutions(
                orchestrator_pb2.ListExecutionsRequest(page_size=200, page_token=token),
                metadata=mesh.admin,
                timeout=30,
            )
            for e in page.executions:
                if e.execution_id in idset:
                    name = orchestrator_pb2.ExecutionStatus.Name(e.status).removeprefix(
                        "EXECUTION_STATUS_"
                    )
                    statuses[name] = statuses.get(name, 0) + 1
            token = page.next_page_token
            if not token:
                break
        await asyncio.sleep(1.5)  # outcome reports to KAM land
        settled = 0
        for c in mesh.clients:
            token = ""
            while True:
                page = await mesh.requests.ListRequests(
                    requests_pb2.ListRequestsRequest(
                        page_size=200,
                        page_token=token,
                        status=requests_pb2.REQUEST_STATUS_COMPLETED,
                    ),
                    metadata=c.key,
                    timeout=30,
                )
                settled += len(page.requests)
                token = page.next_page_token
                if not token:
                    break
    ok = statuses.get("SUCCEEDED", 0)
    return {
        "n": n,
        "queued_depth": depth,
        "submit_s": submit_s,
        "drain_s": drain_s,
        "per_s": depth / drain_s,  # what was queued when the worker came back
        "succeeded": ok,
        "statuses": statuses,
        "kam_completed": settled,
        "errors": n - ok,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--limit", type=float, default=900, help="seconds the drain may take at most")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n = 200
    load0 = loadavg()
    runs = []
    for rep in range(a.reps):
        r = asyncio.run(one_rep(a.n, a.limit))
        log(
            f"  rep {rep + 1}: drained {r['succeeded']}/{a.n} in {r['drain_s']:.1f}s ({r['per_s']:.1f}/s)"
        )
        runs.append(r)
    print(f"\nreps={a.reps}; median (min–max); load avg at start {load0}")
    print(
        table(
            [
                "executions",
                "queued before start",
                "submit s",
                "drain s",
                "execs/s",
                "succeeded",
                "KAM settled",
                "statuses",
            ],
            [
                [
                    a.n,
                    mmm([r["queued_depth"] for r in runs], 0),
                    mmm([r["submit_s"] for r in runs]),
                    mmm([r["drain_s"] for r in runs]),
                    mmm([r["per_s"] for r in runs]),
                    mmm([r["succeeded"] for r in runs], 0),
                    mmm([r["kam_completed"] for r in runs], 0),
                    runs[-1]["statuses"],
                ]
            ],
        )
    )
    path = save("drain", {"runs": runs, "load": load0})
    print(f"results: {path}")
    errors = sum(r["errors"] for r in runs)
    print(
        f"SUMMARY drain: {a.n} queued executions drained in {med([r['drain_s'] for r in runs]):.1f}s "
        f"= {med([r['per_s'] for r in runs]):.1f} execs/s; errors {errors}"
    )


if __name__ == "__main__":
    main()
