"""Client requests: idempotent creation, one execution per request, cancellation, filters, and
a status that follows the execution's outcome through the real orchestrator."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2
from tests.common import Client
from tests.kam.helpers import Kam, fails, kam, parked_template, reason, violated_fields


async def wait_for_status(k: Kam, client: Client, request_id: str) -> requests_pb2.ClientRequest:
    for _ in range(100):
        request = await k.get_request(client.key, request_id)
        if request.status != requests_pb2.REQUEST_STATUS_RUNNING:
            return request
        await asyncio.sleep(0.1)
    raise AssertionError("the request is still running")


async def test_the_same_idempotency_key_returns_the_same_request(client: Client) -> None:
    async with kam(client.mesh) as k:
        first = await k.create_request(client.key, idempotency_key="order-17")
        again = await k.create_request(client.key, idempotency_key="order-17", topic="Other")
        other = await k.create_request(client.key, idempotency_key="order-18")
    assert again == first and other.request_id != first.request_id


async def test_executing_twice_returns_the_same_execution(client: Client) -> None:
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("parked"))
        request = await k.create_request(client.key, "parked")
        first = await k.execute(client.key, request.request_id)
        second = await k.execute(client.key, request.request_id)
        assert first and first == second
        assert (await k.get_request(client.key, request.request_id)).execution_id == first


async def test_cancelling_a_request_cancels_it_once(client: Client) -> None:
    async with kam(client.mesh) as k:
        request = await k.create_request(client.key)
        cancel = requests_pb2.CancelRequestRequest(request_id=request.request_id)
        done = await k.requests.CancelRequest(cancel, metadata=client.key)
        assert done.request.status == requests_pb2.REQUEST_STATUS_CANCELLED
        error = await fails(
            k.requests.CancelRequest(cancel, metadata=client.key),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason(error) == "REQUEST_FINISHED"
        error = await fails(
            k.execute(client.key, request.request_id), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert reason(error) == "REQUEST_FINISHED"


async def test_requests_are_listed_newest_first_with_filters(client: Client) -> None:
    async with kam(client.mesh) as k:
        course = await k.create_request(client.key)
        quiz = await k.create_request(client.key, structure_type=common_pb2.STRUCTURE_TYPE_QUIZ)
        cancelled = await k.create_request(client.key)
        await k.requests.CancelRequest(
            requests_pb2.CancelRequestRequest(request_id=cancelled.request_id), metadata=client.key
        )

        async def ids(**filters: object) -> list[str]:
            listed = await k.requests.ListRequests(
                requests_pb2.ListRequestsRequest(**filters),  # type: ignore[arg-type]
                metadata=client.key,
            )
            return [r.request_id for r in listed.requests]

        assert await ids() == [cancelled.request_id, quiz.request_id, course.request_id]
        assert await ids(structure_type=common_pb2.STRUCTURE_TYPE_QUIZ) == [quiz.request_id]
        assert await ids(status=requests_pb2.REQUEST_STATUS_CANCELLED) == [cancelled.request_id]
        assert await ids(master_template="quiz_standard") == [quiz.request_id]
        first_page = await k.requests.ListRequests(
            requests_pb2.ListRequestsRequest(page_size=2), metadata=client.key
        )
        assert len(first_page.requests) == 2 and first_page.next_page_token


async def test_bad_request_input_gets_field_violations(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.create_request(client.key, topic=" ", granularity=6, urgency=9),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"urgency"}
        error = await fails(
            k.create_request(client.key, topic=" ", granularity=6),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"spec.topic", "spec.granularity"}
        error = await fails(
            k.create_request(
                client.key, "quiz_standard", structure_type=common_pb2.STRUCTURE_TYPE_COURSE
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"spec.structure_type"}
        error = await fails(k.create_request(client.admin), grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {"client_id"}
        await fails(k.create_request(client.key, "no_such_template"), grpc.StatusCode.NOT_FOUND)


async def test_a_completed_execution_shows_on_the_request_with_its_job_and_cost(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        request = await k.create_request(client.key, topic="Knowledge Graphs")
        execution_id = await k.execute(client.key, request.request_id)
        done = await wait_for_status(k, client, request.request_id)
    assert done.status == requests_pb2.REQUEST_STATUS_COMPLETED, done.error_message
    assert done.execution_id == execution_id
    assert done.job_id
    assert done.reserved_usd == 0
    assert done.cost_usd == pytest.approx(done.usage.cost_usd)
    assert done.usage.provider == "offline"
