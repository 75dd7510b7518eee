"""One id finds a request's whole path: the request id travels from KAM to the orchestrator in
gRPC metadata, and the execution id from the orchestrator to the granulator, and every server's
log line for the call carries them."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, requests_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core import logs
from tests.common import Client


async def test_request_and_execution_ids_follow_the_request_through_every_server(
    client: Client,
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    logs.configure("mesh", as_json=True, stream=stream)
    try:
        async with (
            grpc.aio.insecure_channel(client.mesh.kam.address) as kam,
            grpc.aio.insecure_channel(client.mesh.orchestrator.address) as orchestrator,
        ):
            requests = requests_pb2_grpc.RequestServiceStub(kam)
            created = await requests.CreateRequest(
                requests_pb2.CreateRequestRequest(
                    spec=common_pb2.ContentSpec(
                        topic="Tracing",
                        granularity=1,
                        structure_type=common_pb2.STRUCTURE_TYPE_QUIZ,
                    )
                ),
                metadata=client.key,
                timeout=10,
            )
            executed = await requests.ExecuteRequest(
                requests_pb2.ExecuteRequestRequest(request_id=created.request.request_id),
                metadata=(*client.key, ("x-request-id", "trace-me-42")),
                timeout=10,
            )
            async for _ in orchestrator_pb2_grpc.OrchestratorServiceStub(
                orchestrator
            ).WatchExecution(
                orchestrator_pb2.WatchExecutionRequest(execution_id=executed.execution_id),
                metadata=client.key,
                timeout=30,
            ):
                pass
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines: list[dict[str, Any]] = [json.loads(line) for line in stream.getvalue().splitlines()]
    rpcs = [line for line in lines if line["event"] == "rpc"]

    def served(server: str, method: str) -> dict[str, Any]:
        return next(r for r in rpcs if r["server"] == server and r["method"].endswith(method))

    execute = served("kam.bitware", "/ExecuteRequest")
    pipeline = served("orchestrator.bitware", "/ExecutePipeline")
    assert execute["request_id"] == pipeline["request_id"] == "trace-me-42"
    assert pipeline["execution_id"] == executed.execution_id
    for method in ("/Handshake", "/Process"):
        assert served("granulator.bitware", method)["execution_id"] == executed.execution_id
