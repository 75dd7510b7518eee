"""/healthz, /metrics, OpenAPI, workers, queue, usage, and the status table itself."""

from __future__ import annotations

import grpc
import httpx
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import rpc_error
from tests.common import Client
from tests.gateway.conftest import admin, closed_address, gateway_client, gateway_settings, key
from tests.metrics import names, value


async def test_healthz_is_ok_when_every_upstream_serves(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ok",
        "upstreams": {"kam": "ok", "orchestrator": "ok", "granulator": "ok"},
    }


async def test_healthz_is_503_naming_an_upstream_that_is_down(client: Client) -> None:
    settings = gateway_settings(client.mesh, granulator_address=closed_address())
    async with gateway_client(settings) as http:
        answer = await http.get("/healthz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["failing"] == ["granulator"]
    assert body["upstreams"]["granulator"].startswith("UNAVAILABLE")
    assert body["upstreams"]["kam"] == "ok"


async def test_an_unreachable_upstream_is_503(client: Client) -> None:
    settings = gateway_settings(client.mesh, kam_address=closed_address())
    async with gateway_client(settings) as http:
        answer = await http.get("/api/requests", headers=key(client))
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "UNAVAILABLE"


async def test_metrics_count_requests_by_route_and_upstream_errors_by_code(
    http: httpx.AsyncClient, client: Client
) -> None:
    await http.get("/api/requests/req_a", headers=key(client))
    await http.get("/api/requests/req_b", headers=key(client))
    answer = await http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    route = {"method": "GET", "route": "/api/requests/{request_id}", "status": "404"}
    assert value(text, "bitware_gateway_requests_total", **route) == 2
    # Latency is a histogram by route and status.
    assert value(text, "bitware_gateway_request_seconds_count", **route) == 2
    assert value(text, "bitware_gateway_request_seconds_bucket", **route, le="+Inf") == 2
    assert value(text, "bitware_gateway_upstream_errors_total", code="NOT_FOUND") == 2
    assert value(text, "process_resident_memory_bytes") > 10_000_000
    assert "python_gc_collections_total" in names(text)
    openmetrics = await http.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


async def test_request_id_is_echoed_and_made_when_missing(
    http: httpx.AsyncClient, client: Client
) -> None:
    given = await http.get("/healthz", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = await http.get("/healthz", headers={b"x-request-id": "bad id\u00e9".encode()})
    assert made.headers["x-request-id"] not in ("", "bad id")


async def test_workers_and_queue_for_an_admin(http: httpx.AsyncClient, client: Client) -> None:
    workers = await http.get("/api/workers", headers=admin(client))
    assert workers.status_code == 200
    assert [w["worker_id"] for w in workers.json()["workers"]] == ["granulator-1"]
    queue = await http.get("/api/queue", headers=admin(client))
    assert queue.status_code == 200
    assert queue.json()["total_depth"] == 0


async def test_usage_answers_the_clients_budget(http: httpx.AsyncClient, client: Client) -> None:
    answer = await http.get("/api/usage", headers=key(client))
    assert answer.status_code == 200, answer.text
    usage = answer.json()
    assert usage["client_id"] == client.client_id
    assert usage["monthly_budget_usd"] == 100.0
    assert usage["spent_usd"] == 0


async def test_unknown_path_and_wrong_method_use_the_error_shape(
    http: httpx.AsyncClient, client: Client
) -> None:
    missing = await http.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = await http.put("/api/requests")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_openapi_documents_bodies_answers_errors_and_credentials(
    http: httpx.AsyncClient, client: Client
) -> None:
    document = (await http.get("/openapi.json")).json()
    create = document["paths"]["/api/requests"]["post"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref.endswith("/CreateRequestBody")
    ok = create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok == "#/components/schemas/bitware.kam.v1.CreateRequestResponse"
    assert create["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorBody"
    )
    schemas = document["components"]["schemas"]
    request = schemas["bitware.kam.v1.ClientRequest"]["properties"]
    assert "REQUEST_STATUS_COMPLETED" in request["status"]["enum"]
    assert request["create_time"]["format"] == "date-time"
    assert set(document["components"]["securitySchemes"]) >= {"ApiKey", "Session", "WorkerToken"}
    events = document["paths"]["/api/executions/{execution_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert (await http.get("/docs")).status_code == 200

    def refs(node: object) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    names = {ref.removeprefix("#/components/schemas/") for ref in refs(document)}
    assert names <= set(schemas)  # every reference resolves


def _failure(code: grpc.StatusCode, *details: object) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)  # type: ignore[arg-type]
        packed.append(wrapper)
    status = status_pb2.Status(code=code.value[0], message="went wrong", details=packed)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details="went wrong")


def test_resource_exhausted_is_429_with_retry_after_and_reason() -> None:
    delay = duration_pb2.Duration(seconds=41, nanos=500_000_000)
    status, body, headers = rpc_error(
        _failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            error_details_pb2.ErrorInfo(reason="BUDGET_EXCEEDED", domain="kam.bitware"),
            error_details_pb2.RetryInfo(retry_delay=delay),
        )
    )
    assert status == 429
    assert headers == {"Retry-After": "42"}
    assert body["error"]["reason"] == "BUDGET_EXCEEDED"


def test_the_status_table() -> None:
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 502,
        grpc.StatusCode.UNKNOWN: 502,
        grpc.StatusCode.DATA_LOSS: 502,
    }
    for code, http_status in expected.items():
        status, body, _ = rpc_error(_failure(code))
        assert status == http_status, code
        assert body["error"]["code"] == code.name
        assert set(body["error"]) == {"code", "message", "reason", "metadata", "field_violations"}
    _, body, _ = rpc_error(_failure(grpc.StatusCode.INTERNAL))
    assert body["error"]["message"] == "upstream failed with INTERNAL: went wrong"


def test_field_violations_come_from_bad_request() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="spec.topic", description="empty")
        ]
    )
    status, body, _ = rpc_error(_failure(grpc.StatusCode.INVALID_ARGUMENT, bad))
    assert status == 400
    assert body["error"]["field_violations"] == [{"field": "spec.topic", "description": "empty"}]
