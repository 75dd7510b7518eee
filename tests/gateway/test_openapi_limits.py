"""The limits that the servers enforce on a request body are stated in the gateway's OpenAPI
document, so that a generated client knows them: for each, the value at the stated limit is
accepted and the value past it refused with a 400 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.common import Client
from tests.gateway.conftest import key

VALID = {"topic": "Limits", "structure_type": "course", "granularity": 2}


async def body_schema(http: httpx.AsyncClient) -> dict[str, Any]:
    document = (await http.get("/openapi.json")).json()
    operation = document["paths"]["/api/requests"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema["properties"]


@pytest.mark.parametrize(
    ("field", "keyword", "at_limit", "past_limit", "violation"),
    [
        ("topic", "maxLength", "t" * 500, "t" * 501, "spec.topic"),
        ("topic", "minLength", "t", "", "spec.topic"),
        ("audience", "maxLength", "a" * 200, "a" * 201, "spec.audience"),
        ("granularity", "maximum", 5, 6, "spec.granularity"),
        ("idempotency_key", "maxLength", "k" * 200, "k" * 201, "idempotency_key"),
    ],
)
async def test_enforced_limits_are_in_the_openapi_document(
    http: httpx.AsyncClient,
    client: Client,
    field: str,
    keyword: str,
    at_limit: Any,
    past_limit: Any,
    violation: str,
) -> None:
    stated = (await body_schema(http))[field][keyword]
    measure = len(at_limit) if isinstance(at_limit, str) else at_limit
    assert stated == measure, f"OpenAPI says {field} {keyword} {stated}, the server {measure}"

    accepted = await http.post(
        "/api/requests", json={**VALID, field: at_limit}, headers=key(client)
    )
    assert accepted.status_code == 200, accepted.text
    refused = await http.post(
        "/api/requests", json={**VALID, field: past_limit}, headers=key(client)
    )
    assert refused.status_code == 400, refused.text
    assert violation in refused.text


async def test_enums_are_listed(http: httpx.AsyncClient) -> None:
    properties = await body_schema(http)
    document = (await http.get("/openapi.json")).json()
    urgency = properties["urgency"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][urgency]["enum"] == [
        "low",
        "normal",
        "high",
        "critical",
    ]
