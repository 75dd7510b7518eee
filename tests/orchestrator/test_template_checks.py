"""The orchestrator refuses a stored template it cannot run faithfully (defence in depth behind
KAM's validation): a stage list with a gap would otherwise end as succeeded with the stage
after the gap never run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2

from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2
from tests.common import Client
from tests.kam.helpers import details, fails, kam, reason
from tests.orchestrator.conftest import Runner, add_template, stage

Workers = Callable[..., Any]


async def test_a_gapped_stage_list_is_refused_and_nothing_runs(
    client: Client, runner: Runner, workers: Workers
) -> None:
    worker = await workers("w1")
    await add_template(client.mesh, "gapped", [stage(1), stage(3)])
    await add_template(client.mesh, "repeated", [stage(1), stage(1)])
    await add_template(client.mesh, "contiguous", [stage(1), stage(2)])

    for name in ("gapped", "repeated"):
        error = await fails(runner.start(name), grpc.StatusCode.FAILED_PRECONDITION)
        assert reason(error) == "TEMPLATE_INVALID"
        assert "not numbered 1..N" in (error.details() or "")
        (bad,) = details(error, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == ["template.stages[1].order"]

    listed = await runner.stub.ListExecutions(
        orchestrator_pb2.ListExecutionsRequest(), metadata=client.admin, timeout=10
    )
    assert list(listed.executions) == [] and worker.processed == []

    # The same worker runs both stages of a well-numbered template.
    execution = await runner.run("contiguous")
    assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
    assert [s.status for s in execution.stages] == [orchestrator_pb2.STAGE_STATUS_SUCCEEDED] * 2


async def test_kam_cannot_start_a_gapped_template_stored_before_validation(
    client: Client,
) -> None:
    await add_template(client.mesh, "gapped", [stage(1), stage(3)])
    async with kam(client.mesh) as k:
        request = await k.create_request(client.key, "gapped")
        error = await fails(
            k.execute(client.key, request.request_id), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert reason(error) == "ORCHESTRATOR_REFUSED"
        assert "not numbered 1..N" in (error.details() or "")
        # Nothing started: the request is pending again and nothing stays reserved.
        back = await k.get_request(client.key, request.request_id)
        assert back.status == requests_pb2.REQUEST_STATUS_PENDING and back.reserved_usd == 0


async def test_listing_with_stages_gives_each_execution_its_own_stages_and_attempts(
    client: Client, runner: Runner, workers: Workers
) -> None:
    await workers("w1")
    await add_template(client.mesh, "listed", [stage(1), stage(2)])
    ran = [await runner.run("listed") for _ in range(3)]
    listed = await runner.stub.ListExecutions(
        orchestrator_pb2.ListExecutionsRequest(include_stages=True),
        metadata=client.admin,
        timeout=10,
    )
    shown = {e.execution_id: e for e in listed.executions}
    assert set(shown) == {e.execution_id for e in ran}
    for execution in ran:
        stages = shown[execution.execution_id].stages
        assert [s.stage_id for s in stages] == [s.stage_id for s in execution.stages]
        assert [[a.number for a in s.attempts] for s in stages] == [[1], [1]]
