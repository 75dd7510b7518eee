"""Prometheus metrics: every server counts its RPCs and their latency by method and code, and
reports its process and GC; the orchestrator adds queue depth, dispatch latency, stage
durations, retries and worker health, served at /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest

from bitware.orchestrator.v1 import orchestrator_pb2
from bitware.worker.v1 import worker_pb2
from bitware_core.config import ObservabilitySettings, Settings, StorageSettings
from kam_server.server import serve as serve_kam
from tests.common import Client
from tests.metrics import names, value
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]


async def scrape(address: str) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://{address}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return answer.text


async def test_orchestrator_metrics_show_dispatch_stages_retries_and_workers(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=2)])
    flaky = Step(error_class=worker_pb2.ERROR_CLASS_TRANSIENT, reason="RATE_LIMITED")
    await workers("metered", steps=[flaky])
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    await asyncio.sleep(1.2)  # one housekeeping round refreshes the queue and worker figures
    body = generate_latest(client.mesh.orchestrator.metrics).decode()
    execute = "/bitware.orchestrator.v1.OrchestratorService/ExecutePipeline"
    assert value(body, "bitware_rpc_total", method=execute, code="OK") == 1
    assert value(body, "bitware_rpc_seconds_count", method=execute, code="OK") == 1
    assert value(body, "bitware_rpc_seconds_bucket", method=execute, code="OK", le="+Inf") == 1
    assert value(body, "bitware_dispatch_seconds_count") == 2
    stages = "bitware_stage_seconds_count"
    assert value(body, stages, capability="scripted", outcome="result") == 1
    assert value(body, stages, capability="scripted", outcome="error") == 1
    assert value(body, "bitware_stage_retries_total", reason="RATE_LIMITED") == 1
    assert value(body, "bitware_workers", state="healthy") >= 2
    assert value(body, "bitware_queue_depth", priority="normal") == 0


async def test_a_server_serves_metrics_on_its_configured_address(tmp_path: Path) -> None:
    kam = await serve_kam(
        Settings(
            storage=StorageSettings(data_dir=tmp_path),
            observability=ObservabilitySettings(metrics_address="127.0.0.1:0"),
        )
    )
    try:
        assert kam.metrics_address.startswith("127.0.0.1:")  # the port it bound, for port 0
        body = await scrape(kam.metrics_address)
        assert "# TYPE bitware_rpc_total counter" in body
        assert "# TYPE bitware_rpc_seconds histogram" in body
        # Process and GC series, from prometheus_client's collectors.
        assert value(body, "process_resident_memory_bytes") > 10_000_000
        assert {"process_cpu_seconds_total", "python_gc_collections_total"} <= names(body)
    finally:
        await kam.stop(0.5)
