"""Errors reach an HTTP client with the fields the server gave them (`ErrorInfo.metadata`), through
the gateway served for real."""

from __future__ import annotations

import httpx

from gateway.errors import HTTP_STATUS, GatewayError, InvalidInput, UpstreamsNotConnected
from tests.common import Client
from tests.gateway.conftest import gateway_settings, key, served_gateway


async def test_a_missing_request_names_its_id_in_the_body(client: Client) -> None:
    async with (
        served_gateway(gateway_settings(client.mesh)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        answer = await http.get("/api/requests/req_missing", headers=key(client))
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "code": "NOT_FOUND",
            "message": "request 'req_missing' not found",
            "reason": "REQUEST_NOT_FOUND",
            "metadata": {"request_id": "req_missing"},
            "field_violations": [],
        }
    }


async def test_the_gateways_own_errors_have_the_same_shape(client: Client) -> None:
    async with (
        served_gateway(gateway_settings(client.mesh)) as base,
        httpx.AsyncClient(base_url=base) as http,
    ):
        answer = await http.get(
            "/api/executions/exe_any/events",
            headers={**key(client), "Last-Event-ID": "soon"},
        )
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "code": "INVALID_ARGUMENT",
        "message": "header Last-Event-ID: must be a non-negative integer",
        "reason": "",
        "metadata": {},
        "field_violations": [
            {"field": "header Last-Event-ID", "description": "must be a non-negative integer"}
        ],
    }


def test_every_gateway_error_maps_to_a_status_through_the_one_table() -> None:
    classes = GatewayError.__subclasses__()
    assert {cls.__name__ for cls in classes} == {"InvalidInput", "UpstreamsNotConnected"}
    for cls in classes:
        assert cls.code in HTTP_STATUS, cls  # never the 502 of an unmapped code
    assert InvalidInput("query.x", "is wrong").status == 400
    assert UpstreamsNotConnected().status == 503
