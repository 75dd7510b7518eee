"""OpenTelemetry, opt-in: with tracing on, one request through the gateway is one trace, from
the gateway's HTTP span through KAM, the orchestrator (across its asynchronous dispatch) and the
granulator down to the model call, which carries the GenAI attributes. With it off, no span is
made and `opentelemetry` is not even imported. Every server of a real in-process mesh exports to
one in-memory exporter; the model is the local fake OpenAI server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_core import tracing
from bitware_core.config import OpenAISettings, QueueSettings, Settings, SettingsError
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from granulator_server.domain import SEED_TEMPLATES, generate_offline
from tests.cli.conftest import clean_env, serve
from tests.common import eventually, make_client
from tests.gateway.conftest import create_and_execute, gateway_client, gateway_settings
from tests.granulator.fake_openai import FakeOpenAI, reply

QUIZ = next(t for t in SEED_TEMPLATES if t.structure_type == "quiz")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


@pytest.fixture
async def openai_mesh(tmp_path: Path, fake_openai: FakeOpenAI) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url,
            api_key="sk-test-0123456789",
            model="gpt-4o-mini",
            timeout=10.0,
        ),
    )
    running = await start_mesh(tmp_path, base=settings)
    try:
        yield running
    finally:
        await running.stop()


def chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """The names from `span` up to the root of its trace."""
    names = [span.name]
    while span.parent is not None:
        assert span.parent.trace_id == span.context.trace_id
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_one_request_is_one_trace_from_the_gateway_to_the_model_call(
    spans: InMemorySpanExporter, openai_mesh: InProcessMesh, fake_openai: FakeOpenAI
) -> None:
    document = generate_offline(QUIZ, "Rust", "beginners", 2, {})
    fake_openai.add(*(reply(document, prompt_tokens=700, completion_tokens=400) for _ in range(3)))
    client = await make_client(openai_mesh)
    async with gateway_client(gateway_settings(openai_mesh)) as http:
        spans.clear()  # the client's set-up is not part of the request
        _, execution_id = await create_and_execute(
            http, client, topic="Rust", structure_type="quiz", audience="beginners"
        )
        await wait_until_done(http, client.api_key, execution_id)

        # The dispatch span ends once the stage's outcome is recorded, just after the end.
        await eventually(
            lambda: any(s.name == "dispatch granulate" for s in spans.get_finished_spans()), 30
        )

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    (model_call, *_) = [s for s in finished if s.name == "chat gpt-4o-mini"]
    path = chain(model_call, by_id)
    # In this order from the model call up (the gateway's gRPC client spans are not made).
    assert path == [
        "chat gpt-4o-mini",
        "bitware.worker.v1.WorkerService/Process",
        "dispatch granulate",
        "bitware.orchestrator.v1.OrchestratorService/ExecutePipeline",
        "bitware.kam.v1.RequestService/ExecuteRequest",
        "POST /api/requests/{request_id}/execute",
    ]
    assert model_call.kind == SpanKind.CLIENT
    attributes = dict(model_call.attributes or {})
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] == 700
    assert attributes["gen_ai.usage.output_tokens"] == 400
    assert attributes["server.address"] == "127.0.0.1"
    # The worker's other calls for the stage are in the same trace, under the dispatch span.
    dispatch = next(s for s in finished if s.name == "dispatch granulate")
    for name in ("Handshake", "WatchProgress"):
        worker_call = next(s for s in finished if s.name.endswith(f"WorkerService/{name}"))
        assert worker_call.parent is not None
        assert worker_call.parent.span_id == dispatch.context.span_id
    server_span = next(s for s in finished if s.name.endswith("RequestService/ExecuteRequest"))
    assert server_span.kind == SpanKind.SERVER
    assert dict(server_span.attributes or {})["rpc.grpc.status_code"] == 0


async def wait_until_done(http: httpx.AsyncClient, api_key: str, execution_id: str) -> None:
    state: dict[str, str] = {}

    async def poll() -> None:
        answer = await http.get(f"/api/executions/{execution_id}", headers={"X-API-Key": api_key})
        state["status"] = answer.json()["execution"]["status"]

    for _ in range(600):  # bounded: 60 s
        await poll()
        if state["status"] not in ("EXECUTION_STATUS_QUEUED", "EXECUTION_STATUS_RUNNING"):
            break
        await eventually(lambda: True, within=0.1)
    assert state["status"] == "EXECUTION_STATUS_SUCCEEDED", state


def test_off_by_default_and_a_bad_exporter_is_one_line() -> None:
    assert not tracing.configure("kam", {})
    assert not tracing.configure("kam", {"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.configure(
        "kam", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}
    )
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER='jaeger' is not accepted"):
        tracing.configure("kam", {"OTEL_TRACES_EXPORTER": "jaeger"})
    assert tracing.span("x").__enter__() is None
    assert tracing.headers() == ()


@pytest.mark.parametrize(
    ("modules", "prefix"),
    [
        (
            "orchestrator_server.server, granulator_server.server, kam_server.server, "
            "granulator_server.providers.openai_chat",
            "opentelemetry",
        ),
        # FastAPI (≥ 0.16x) imports opentelemetry-api itself when it is installed, for its
        # native telemetry (off without a global provider); the SDK is ours to import.
        ("gateway.app", "opentelemetry.sdk"),
    ],
)
def test_with_tracing_off_opentelemetry_is_not_imported(modules: str, prefix: str) -> None:
    probe = (
        f"import sys; import {modules}; from bitware_core import tracing; "
        "tracing.configure('x'); "
        f"print(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )
    assert result.stdout.strip() == "[]"


def test_a_server_with_an_unknown_exporter_stops_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kam_server"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env(BITWARE_DATA_DIR=str(tmp_path)), "OTEL_TRACES_EXPORTER": "jaeger"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kam: OTEL_TRACES_EXPORTER='jaeger' is not accepted: use otlp, console, none"
    )


def test_a_server_process_exports_its_spans_by_the_otel_variables(tmp_path: Path) -> None:
    kam = serve(
        "kam",
        tmp_path,
        BITWARE_DATA_DIR=str(tmp_path),
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="kam-under-test",
    )
    try:
        with (
            grpc.insecure_channel(kam.address) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(email="nobody@example.com", password="wrong-password"),
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert kam.stop() == 0  # the batch of spans is flushed as the process exits
    log = kam.log.read_text()
    spans = [json.loads(text) for text in re.findall(r"^\{\n.*?^\}$", log, re.M | re.S)]
    (login,) = [s for s in spans if s["name"] == "bitware.kam.v1.AuthService/Login"]
    assert login["kind"] == "SpanKind.SERVER"
    assert login["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert login["resource"]["attributes"]["service.name"] == "kam-under-test"
