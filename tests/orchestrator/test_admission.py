"""Work starts only through KAM: a client cannot start or retry executions on the orchestrator
itself, and retrying is a KAM operation whose run the request and the ledger follow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
)
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware.worker.v1 import worker_pb2
from tests.common import Client, make_client
from tests.e2e.test_contracts import GRPCURL
from tests.orchestrator.conftest import add_template, stage
from tests.orchestrator.scripted_worker import Step

Workers = Callable[..., Any]


async def grpcurl_exit_code(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_a_client_key_cannot_start_or_retry_executions_on_the_orchestrator(
    client: Client,
) -> None:
    address = client.mesh.orchestrator.address
    # What the issue tried: a $0 basic client asking for critical priority and no limit.
    poor = await make_client(client.mesh, tier=common_pb2.TIER_BASIC, budget=0.0)
    body = json.dumps(
        {
            "template_name": "course_standard",
            "client_id": poor.client_id,
            "priority": "PRIORITY_CRITICAL",
            "client_concurrency_limit": 1000,
            "spec": {"topic": "Free lunch", "granularity": 2},
        }
    )
    code, stderr = await grpcurl_exit_code(
        "-plaintext",
        "-H",
        f"x-api-key: {poor.api_key}",
        "-d",
        body,
        address,
        "bitware.orchestrator.v1.OrchestratorService/ExecutePipeline",
    )
    # grpcurl exits with 64 + the status code: PERMISSION_DENIED (7) is 71.
    assert code == 71, stderr
    assert "PermissionDenied" in stderr, stderr

    async with grpc.aio.insecure_channel(address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        for name, call in (
            (
                "ExecutePipeline",
                stub.ExecutePipeline(
                    orchestrator_pb2.ExecutePipelineRequest(
                        template_name="course_standard", client_id=poor.client_id
                    ),
                    metadata=poor.key,
                    timeout=10,
                ),
            ),
            (
                "RetryExecution",
                stub.RetryExecution(
                    orchestrator_pb2.RetryExecutionRequest(execution_id="exe_anything"),
                    metadata=poor.key,
                    timeout=10,
                ),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            status = rpc_status.from_call(refused.value)
            assert status is not None, name
            infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
            assert len(infos) == 1, (name, status)
        listed = await stub.ListExecutions(
            orchestrator_pb2.ListExecutionsRequest(), metadata=client.admin, timeout=10
        )
    assert not [e for e in listed.executions if e.client_id == poor.client_id]


async def wait_for_status(
    requests: requests_pb2_grpc.RequestServiceStub, client: Client, request_id: str, status: int
) -> requests_pb2.ClientRequest:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        got = await requests.GetRequest(
            requests_pb2.GetRequestRequest(request_id=request_id), metadata=client.key, timeout=10
        )
        if got.request.status == status:
            return got.request
        assert loop.time() < deadline, got.request
        await asyncio.sleep(0.05)


async def test_retrying_a_failed_request_reruns_it_and_charges_every_run(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2, max_attempts=1)])
    refused = Step(error_class=worker_pb2.ERROR_CLASS_INVALID_INPUT)
    worker = await workers("once-bad", steps=[Step(), refused])
    kam = grpc.aio.insecure_channel(client.mesh.kam.address)
    orchestrator = grpc.aio.insecure_channel(client.mesh.orchestrator.address)
    async with kam, orchestrator:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        executions = orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator)
        usage = accounts_pb2_grpc.ClientServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(topic="Retries", granularity=2),
                master_template="two_stages",
            ),
            metadata=client.key,
            timeout=10,
        )
        request_id = created.request.request_id
        executed = await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=request_id),
            metadata=client.key,
            timeout=10,
        )
        failed = await wait_for_status(
            requests, client, request_id, requests_pb2.REQUEST_STATUS_FAILED
        )
        assert failed.job_id == "" and failed.reserved_usd == 0
        assert failed.cost_usd == pytest.approx(0.002)  # stage 1 and stage 2's failed attempt

        retried = await requests.RetryRequest(
            requests_pb2.RetryRequestRequest(request_id=request_id),
            metadata=client.key,
            timeout=10,
        )
        assert retried.execution_id == executed.execution_id
        assert retried.request.status == requests_pb2.REQUEST_STATUS_RUNNING
        assert retried.request.retries == 1
        assert retried.request.reserved_usd == pytest.approx(0.01)  # the estimate, again

        done = await wait_for_status(
            requests, client, request_id, requests_pb2.REQUEST_STATUS_COMPLETED
        )
        execution = (
            await executions.GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=executed.execution_id),
                metadata=client.key,
                timeout=10,
            )
        ).execution
        assert execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
        assert execution.retries == 1
        assert done.job_id == execution.job_id != ""
        # Every attempt of both runs is charged: stage 1, stage 2 failed, stage 2 again.
        assert done.cost_usd == pytest.approx(execution.usage.cost_usd) == pytest.approx(0.003)
        assert done.reserved_usd == 0
        assert done.usage.prompt_tokens == 30
        assert len(worker.processed) == 3  # stage 1 was not run again

        ledger = await usage.GetUsage(
            accounts_pb2.GetUsageRequest(client_id=client.client_id),
            metadata=client.key,
            timeout=10,
        )
        assert ledger.spent_usd == pytest.approx(0.003)
        assert ledger.reserved_usd == 0

        # Retrying again is refused: the request did not fail this time.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await requests.RetryRequest(
                requests_pb2.RetryRequestRequest(request_id=request_id),
                metadata=client.key,
                timeout=10,
            )
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(again.value)
        assert status is not None
        [info] = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        reason = error_details_pb2.ErrorInfo()
        info.Unpack(reason)
        assert reason.reason == "NOT_FAILED"


async def test_a_retry_the_budget_cannot_cover_is_refused_and_reserves_nothing(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "one_stage", [stage(max_attempts=1)])
    await workers("bad", default=Step(error_class=worker_pb2.ERROR_CLASS_INVALID_INPUT))
    # The estimate is $0.01 and the first run costs $0.001: $0.0105 leaves too little.
    tight = await make_client(client.mesh, budget=0.0105)
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as kam:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(topic="Tight", granularity=2),
                master_template="one_stage",
            ),
            metadata=tight.key,
            timeout=10,
        )
        request_id = created.request.request_id
        await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=request_id),
            metadata=tight.key,
            timeout=10,
        )
        await wait_for_status(requests, tight, request_id, requests_pb2.REQUEST_STATUS_FAILED)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await requests.RetryRequest(
                requests_pb2.RetryRequestRequest(request_id=request_id),
                metadata=tight.key,
                timeout=10,
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = await requests.GetRequest(
            requests_pb2.GetRequestRequest(request_id=request_id), metadata=tight.key, timeout=10
        )
    assert after.request.status == requests_pb2.REQUEST_STATUS_FAILED
    assert after.request.reserved_usd == 0 and after.request.retries == 0


async def test_a_request_that_ran_out_of_time_gets_the_whole_limit_again_on_retry(
    client: Client, workers: Workers
) -> None:
    await add_template(client.mesh, "quick_one", [stage()], execution_timeout_s=4.0)
    # The first run outlives the limit; the retry takes 2 s: well within a new 4 s limit, and
    # longer than the second in which the old, spent deadline would fail it again.
    await workers("slow-then-fast", steps=[Step(delay=30), Step(delay=2)])
    async with grpc.aio.insecure_channel(client.mesh.kam.address) as kam:
        requests = requests_pb2_grpc.RequestServiceStub(kam)
        created = await requests.CreateRequest(
            requests_pb2.CreateRequestRequest(
                spec=common_pb2.ContentSpec(topic="In time", granularity=2),
                master_template="quick_one",
            ),
            metadata=client.key,
            timeout=10,
        )
        request_id = created.request.request_id
        await requests.ExecuteRequest(
            requests_pb2.ExecuteRequestRequest(request_id=request_id),
            metadata=client.key,
            timeout=10,
        )
        failed = await wait_for_status(
            requests, client, request_id, requests_pb2.REQUEST_STATUS_FAILED
        )
        assert "time limit" in failed.error_message
        await requests.RetryRequest(
            requests_pb2.RetryRequestRequest(request_id=request_id),
            metadata=client.key,
            timeout=10,
        )
        done = await wait_for_status(
            requests, client, request_id, requests_pb2.REQUEST_STATUS_COMPLETED
        )
    assert done.retries == 1 and done.job_id
