"""KAM's errors reach the caller with their fields as `ErrorInfo.metadata` (the interceptor
adds them; no call site builds metadata)."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2

from tests.common import Client, make_client
from tests.kam.helpers import details, fails, kam, parked_template


async def test_budget_exceeded_carries_the_client_and_the_amounts(client: Client) -> None:
    poor = await make_client(client.mesh, budget=0.10)
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("errors_pricey", cost=0.06))
        first = await k.create_request(poor.key, "errors_pricey")
        second = await k.create_request(poor.key, "errors_pricey")
        await k.execute(poor.key, first.request_id)
        error = await fails(
            k.execute(poor.key, second.request_id), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    (info,) = details(error, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("BUDGET_EXCEEDED", "kam.bitware")
    assert dict(info.metadata) == {
        "client_id": poor.client_id,
        "needed_usd": "0.0600",
        "remaining_usd": "0.0400",
    }
    assert error.details() == "executing needs $0.06 but only $0.04 of the monthly budget is left"


async def test_a_missing_request_names_its_id(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(k.get_request(client.key, "req_missing"), grpc.StatusCode.NOT_FOUND)
    (info,) = details(error, error_details_pb2.ErrorInfo)
    assert info.reason == "REQUEST_NOT_FOUND"
    assert dict(info.metadata) == {"request_id": "req_missing"}
