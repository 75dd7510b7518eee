"""The orchestrator's errors reach the caller with their fields as `ErrorInfo.metadata` (the
interceptor adds them; no call site builds metadata)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from bitware.orchestrator.v1 import orchestrator_pb2
from tests.common import PARKED_CAPABILITY
from tests.kam.helpers import details
from tests.orchestrator.conftest import Runner, add_template, stage


async def test_retrying_an_execution_that_did_not_fail_names_it_and_its_status(
    runner: Runner,
) -> None:
    await add_template(runner.client.mesh, "parked", [stage(capability=PARKED_CAPABILITY)])
    execution_id = await runner.start("parked")  # no worker has the capability: it waits
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runner.stub.RetryExecution(
            orchestrator_pb2.RetryExecutionRequest(execution_id=execution_id),
            metadata=runner.client.admin,
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    (info,) = details(raised.value, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("NOT_FAILED", "orchestrator.bitware")
    assert dict(info.metadata) == {"execution_id": execution_id, "status": "queued"}


async def test_a_missing_execution_names_its_id(runner: Runner) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runner.get("exe_missing")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    (info,) = details(raised.value, error_details_pb2.ErrorInfo)
    assert info.reason == "EXECUTION_NOT_FOUND"
    assert dict(info.metadata) == {"execution_id": "exe_missing"}
