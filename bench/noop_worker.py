"""A worker that does nothing: a second implementation of `bitware.worker.v1.WorkerService` that
accepts every offer and answers `Process` at once with a tiny result (no model, no validation, no
storage, no progress: its Handshake says `no_progress`, so the orchestrator opens no
WatchProgress stream). With it an execution costs only the mesh's own orchestration — KAM's
admission and settlement, the orchestrator's queue, leases, event log and streams — which is
what Celery's chain of two no-op tasks measures, so the two compare like for like.

It runs as its own process, as a third-party worker would: KAM issues its credential, it
registers with the orchestrator under capability `noop` (which KAM must know:
`BITWARE_EXTRA_CAPABILITIES=noop`) and sends heartbeats. Like the other bench workers it serves
plain gRPC without checking callers' credentials (loopback only).

    MeshOptions(provider="noop")   # bench/common.py starts it and runs the `bench_noop` template
    .venv/bin/python bench/e2e_throughput.py --providers noop
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from google.protobuf import struct_pb2

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc

CAPABILITY = "noop"
TEMPLATE = "bench_noop"
#: Stages it takes at once: it holds none for long.
SLOTS = 64


class NoopWorker(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    async def Handshake(
        self, request: worker_pb2.HandshakeRequest, context: Any
    ) -> worker_pb2.HandshakeResponse:
        # It reports no progress: the orchestrator need not open a WatchProgress stream.
        return worker_pb2.HandshakeResponse(
            accepted=True, worker_id=self.worker_id, no_progress=True
        )

    async def Process(
        self, request: worker_pb2.ProcessRequest, context: Any
    ) -> worker_pb2.ProcessResponse:
        output = struct_pb2.Struct()
        output["ok"] = True
        result = worker_pb2.StageResult(output=output, job_id=f"noop-{request.stage.stage_id}")
        result.quality.score = 100.0
        return worker_pb2.ProcessResponse(
            result=result, usage=common_pb2.Usage(provider="noop", model="noop")
        )

    async def WatchProgress(self, request: worker_pb2.WatchProgressRequest, context: Any) -> Any:
        return  # no progress to report (only an orchestrator that predates no_progress asks)
        yield  # a generator: the stream ends at once

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: Any
    ) -> worker_pb2.CancelResponse:
        return worker_pb2.CancelResponse(cancelled=False)


def main() -> None:
    from common import serve_worker

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orchestrator", required=True)
    ap.add_argument("--worker-id", default="bench-noop")
    ap.add_argument("--max-life", type=float, default=1800)
    a = ap.parse_args()
    asyncio.run(
        serve_worker(
            NoopWorker(a.worker_id), a.orchestrator, a.worker_id, CAPABILITY, SLOTS, a.max_life
        )
    )


if __name__ == "__main__":
    main()
