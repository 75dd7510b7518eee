"""Requests and executions through the gateway, with each error mapping once."""

from __future__ import annotations

import asyncio

import httpx

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2
from bitware_core.tiers import TIER_LIMITS
from tests.common import Client, make_client
from tests.gateway.conftest import admin, create_and_execute, key
from tests.orchestrator.conftest import add_template, stage
from tests.orchestrator.scripted_worker import ScriptedWorker, Step


async def _finished(http: httpx.AsyncClient, client: Client, request_id: str) -> dict[str, object]:
    for _ in range(100):
        request = (await http.get(f"/api/requests/{request_id}", headers=key(client))).json()
        if request["request"]["status"] == "REQUEST_STATUS_COMPLETED":
            return dict(request["request"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"request {request_id} did not complete")


async def test_created_request_is_listed_read_and_executed(
    http: httpx.AsyncClient, client: Client
) -> None:
    created = await http.post(
        "/api/requests",
        json={
            "topic": "Rust",
            "structure_type": "quiz",
            "urgency": "high",
            "constraints": {"max_questions": "8"},
            "idempotency_key": "quiz-1",
        },
        headers=key(client),
    )
    assert created.status_code == 200, created.text
    request = created.json()["request"]
    assert request["spec"]["structure_type"] == "STRUCTURE_TYPE_QUIZ"
    assert request["urgency"] == "URGENCY_HIGH"
    assert request["status"] == "REQUEST_STATUS_PENDING"
    assert request["cost_usd"] == 0  # defaults are present, so the shape never changes

    again = await http.post(
        "/api/requests",
        json={"topic": "Rust", "structure_type": "quiz", "idempotency_key": "quiz-1"},
        headers=key(client),
    )
    assert again.json()["request"]["request_id"] == request["request_id"]

    listed = await http.get(
        "/api/requests", params={"status": "pending", "page_size": 10}, headers=key(client)
    )
    assert listed.status_code == 200
    assert [r["request_id"] for r in listed.json()["requests"]] == [request["request_id"]]
    assert (
        await http.get("/api/requests", params={"status": "completed"}, headers=key(client))
    ).json()["requests"] == []

    got = await http.get(f"/api/requests/{request['request_id']}", headers=key(client))
    assert got.json()["request"]["request_id"] == request["request_id"]


async def test_execution_is_readable_and_listed_once_done(
    http: httpx.AsyncClient, client: Client
) -> None:
    request_id, execution_id = await create_and_execute(http, client)
    await _finished(http, client, request_id)
    execution = await http.get(f"/api/executions/{execution_id}", headers=key(client))
    assert execution.status_code == 200
    body = execution.json()["execution"]
    assert body["status"] == "EXECUTION_STATUS_SUCCEEDED"
    assert body["stages"][0]["quality"]["score"] >= 80
    assert body["last_sequence"].isdigit()  # int64 travels as a string in protobuf JSON

    listed = await http.get("/api/executions", params={"status": "succeeded"}, headers=key(client))
    assert [e["execution_id"] for e in listed.json()["executions"]] == [execution_id]


async def test_no_credential_is_401(http: httpx.AsyncClient, client: Client) -> None:
    answer = await http.get("/api/requests")
    assert answer.status_code == 401
    error = answer.json()["error"]
    assert error["code"] == "UNAUTHENTICATED" and error["message"]
    assert error["reason"]  # ErrorInfo.reason from KAM, passed on as it is


async def test_api_key_on_an_admin_route_is_403(http: httpx.AsyncClient, client: Client) -> None:
    answer = await http.get("/api/clients", headers=key(client))
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "PERMISSION_DENIED"


async def test_unknown_request_is_404(http: httpx.AsyncClient, client: Client) -> None:
    answer = await http.get("/api/requests/req_nope", headers=key(client))
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NOT_FOUND"


async def test_empty_topic_is_400_with_field_violations(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.post(
        "/api/requests", json={"topic": "", "structure_type": "course"}, headers=key(client)
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "spec.topic" in {v["field"] for v in error["field_violations"]}


async def test_cancelling_a_finished_request_is_409(
    http: httpx.AsyncClient, client: Client
) -> None:
    request_id, _ = await create_and_execute(http, client)
    await _finished(http, client, request_id)
    answer = await http.post(f"/api/requests/{request_id}/cancel", headers=key(client))
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "FAILED_PRECONDITION"


async def test_cancelling_a_pending_request_answers_it_cancelled(
    http: httpx.AsyncClient, client: Client
) -> None:
    created = await http.post(
        "/api/requests", json={"topic": "Go", "structure_type": "course"}, headers=key(client)
    )
    request_id = created.json()["request"]["request_id"]
    answer = await http.post(f"/api/requests/{request_id}/cancel", headers=key(client))
    assert answer.status_code == 200
    assert answer.json()["request"]["status"] == "REQUEST_STATUS_CANCELLED"


async def test_malformed_json_is_422_with_the_error_shape(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.post(
        "/api/requests",
        content=b'{"topic": "x", ',
        headers={**key(client), "content-type": "application/json"},
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["field_violations"][0]["field"] == "body"
    assert "not valid JSON" in error["message"]


async def test_wrong_types_and_unknown_values_are_422_naming_each_field(
    http: httpx.AsyncClient, client: Client
) -> None:
    answer = await http.post(
        "/api/requests",
        json={"topic": 5, "structure_type": "poem", "granularity": "fine", "colour": "red"},
        headers=key(client),
    )
    assert answer.status_code == 422
    fields = {v["field"] for v in answer.json()["error"]["field_violations"]}
    assert fields == {"body.topic", "body.structure_type", "body.granularity", "body.colour"}

    query = await http.get("/api/requests", params={"page_size": -1}, headers=key(client))
    assert query.status_code == 422
    assert query.json()["error"]["field_violations"][0]["field"] == "query.page_size"


async def test_admin_creates_a_request_for_a_client(
    http: httpx.AsyncClient, client: Client
) -> None:
    created = await http.post(
        "/api/requests",
        json={"topic": "SQL", "structure_type": "workflow", "client_id": client.client_id},
        headers=admin(client),
    )
    assert created.status_code == 200, created.text
    assert created.json()["request"]["client_id"] == client.client_id


async def test_a_failed_request_is_retried_through_kam_and_completes(
    http: httpx.AsyncClient, client: Client
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2, max_attempts=1)])
    refused = Step(error_class=worker_pb2.ERROR_CLASS_INVALID_INPUT)
    worker = ScriptedWorker("once-bad", "scripted", [Step(), refused], Step())
    await worker.start(client.mesh, client.admin)
    try:
        created = await http.post(
            "/api/requests",
            json={"topic": "Retry", "master_template": "two_stages"},
            headers=key(client),
        )
        request_id = created.json()["request"]["request_id"]
        executed = await http.post(f"/api/requests/{request_id}/execute", headers=key(client))
        execution_id = executed.json()["execution_id"]
        for _ in range(300):
            failed = (await http.get(f"/api/requests/{request_id}", headers=key(client))).json()
            if failed["request"]["status"] == "REQUEST_STATUS_FAILED":
                break
            await asyncio.sleep(0.1)
        assert failed["request"]["status"] == "REQUEST_STATUS_FAILED", failed
        # A client cannot retry the execution on the orchestrator; it retries its request.
        direct = await http.post(f"/api/executions/{execution_id}/retry", headers=key(client))
        assert direct.status_code == 403, direct.text
        retried = await http.post(f"/api/requests/{request_id}/retry", headers=key(client))
        assert retried.status_code == 200, retried.text
        assert retried.json()["request"]["status"] == "REQUEST_STATUS_RUNNING"
        assert retried.json()["execution_id"] == execution_id
        done = await _finished(http, client, request_id)
        execution = (await http.get(f"/api/executions/{execution_id}", headers=key(client))).json()
        assert done["job_id"] == execution["execution"]["job_id"]
        assert done["retries"] == 1
    finally:
        await worker.stop()


async def test_a_client_over_its_request_rate_gets_429_with_retry_after(
    http: httpx.AsyncClient, client: Client
) -> None:
    basic = await make_client(client.mesh, tier=common_pb2.TIER_BASIC)
    body = {"topic": "Rates", "structure_type": "course"}
    statuses = []
    for _ in range(4 * TIER_LIMITS["basic"].request_burst):  # bounded: the burst, then refusal
        answer = await http.post("/api/requests", json=body, headers=key(basic))
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            break
    assert statuses[-1] == 429, statuses
    assert statuses.count(200) >= TIER_LIMITS["basic"].request_burst
    assert answer.json()["error"]["reason"] == "RATE_LIMITED"
    assert int(answer.headers["retry-after"]) >= 1
