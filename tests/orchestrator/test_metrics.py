"""Prometheus metrics: every server counts its RPCs; the orchestrator adds queue depth, dispatch
latency, stage durations, retries and worker health, served at /metrics."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bitware.orchestrator.v1 import orchestrator_pb2
from bitware.worker.v1 import worker_pb2
from bitware_core.config import Settings
from bitware_core.metrics import serve_metrics
from kam_server.server import serve as serve_kam
from tests.conftest import Client
from tests.orchestrator.conftest import Runner, add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]


async def scrape(address: str) -> str:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return body


def value(body: str, pattern: str) -> float:
    match = re.search(rf"^{pattern} ([0-9.e+-]+)$", body, re.MULTILINE)
    assert match, f"no sample matching {pattern!r} in:\n{body}"
    return float(match.group(1))


async def test_orchestrator_metrics_show_dispatch_stages_retries_and_workers(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=2)])
    flaky = Step(error_class=worker_pb2.ERROR_CLASS_TRANSIENT, reason="RATE_LIMITED")
    await workers("metered", steps=[flaky])
    execution = await runner.run("one_stage")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    server = await serve_metrics(client.mesh.orchestrator.metrics, "127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    await asyncio.sleep(1.2)  # one housekeeping round refreshes the queue and worker figures
    body = await scrape(f"127.0.0.1:{port}")
    server.close()
    execute = "/bitware.orchestrator.v1.OrchestratorService/ExecutePipeline"
    assert value(body, rf'bitware_rpc_total\{{method="{execute}",code="OK"\}}') == 1
    assert value(body, "bitware_dispatch_seconds_count") == 2
    stage_count = r'bitware_stage_seconds_count\{capability="scripted",outcome="%s"\}'
    assert value(body, stage_count % "result") == 1
    assert value(body, stage_count % "error") == 1
    assert value(body, r'bitware_stage_retries_total\{reason="RATE_LIMITED"\}') == 1
    assert value(body, r'bitware_workers\{state="healthy"\}') >= 2
    assert value(body, r'bitware_queue_depth\{priority="normal"\}') == 0


async def test_a_server_serves_metrics_on_its_configured_address(tmp_path: Path) -> None:
    kam = await serve_kam(replace(Settings(), data_dir=tmp_path, metrics_address="127.0.0.1:0"))
    try:
        assert kam.metrics_address.startswith("127.0.0.1:")  # the port it bound, for port 0
        body = await scrape(kam.metrics_address)
        assert "# TYPE bitware_rpc_total counter" in body
    finally:
        await kam.stop(0.5)
