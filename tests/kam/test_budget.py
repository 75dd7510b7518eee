"""The budget ledger: executing reserves the estimate, the outcome charges the actual cost and
releases the rest, and nothing runs past the budget."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from kam_server import ledger, models
from tests.common import Client, make_client
from tests.kam.helpers import Kam, fails, kam, parked_template, reason, violated_fields


async def usage(k: Kam, client: Client) -> accounts_pb2.GetUsageResponse:
    return await k.clients.GetUsage(accounts_pb2.GetUsageRequest(), metadata=client.key)


async def executions_of(client: Client) -> int:
    async with grpc.aio.insecure_channel(client.mesh.orchestrator.address) as channel:
        listed = await orchestrator_pb2_grpc.OrchestratorServiceStub(channel).ListExecutions(
            orchestrator_pb2.ListExecutionsRequest(), metadata=client.key, timeout=5
        )
    return len(listed.executions)


async def test_over_budget_is_refused_and_nothing_is_executed(client: Client) -> None:
    poor = await make_client(client.mesh, budget=0.10)
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("pricey", cost=0.06))
        first = await k.create_request(poor.key, "pricey")
        second = await k.create_request(poor.key, "pricey")
        await k.execute(poor.key, first.request_id)
        error = await fails(
            k.execute(poor.key, second.request_id), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert reason(error) == "BUDGET_EXCEEDED"
        refused = await k.get_request(poor.key, second.request_id)
        assert refused.status == requests_pb2.REQUEST_STATUS_PENDING and refused.reserved_usd == 0
    assert await executions_of(poor) == 1


async def test_execution_reserves_and_the_outcome_charges_actual_and_releases_the_rest(
    client: Client,
) -> None:
    orchestrator = client.worker("orchestrator")
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("metered", cost=0.50))
        request = await k.create_request(client.key, "metered")
        execution_id = await k.execute(client.key, request.request_id)

        running = await k.get_request(client.key, request.request_id)
        assert running.status == requests_pb2.REQUEST_STATUS_RUNNING
        assert running.reserved_usd == pytest.approx(0.50)
        before = await usage(k, client)
        assert before.reserved_usd == pytest.approx(0.50) and before.spent_usd == 0
        assert before.remaining_usd == pytest.approx(99.50)
        assert before.requests_this_month == 1

        outcome = requests_pb2.RecordExecutionOutcomeRequest(
            request_id=request.request_id,
            execution_id=execution_id,
            status=requests_pb2.REQUEST_STATUS_COMPLETED,
            usage=common_pb2.Usage(
                prompt_tokens=100, completion_tokens=50, cost_usd=0.12, model="m", provider="p"
            ),
            job_id="job_abc",
        )
        settled = await k.requests.RecordExecutionOutcome(outcome, metadata=orchestrator)
        assert settled.request.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert settled.request.cost_usd == pytest.approx(0.12)
        assert settled.request.reserved_usd == 0 and settled.request.job_id == "job_abc"

        # Reported twice (a retried call): charged once.
        again = await k.requests.RecordExecutionOutcome(outcome, metadata=orchestrator)
        assert again.request.cost_usd == pytest.approx(0.12)
        assert again.request.usage.cost_micros == 120_000

        # The same run reported with more usage (an attempt stopped by a cancel said what it
        # spent after the run ended): the charge rises to the new total, never falls.
        outcome.usage.prompt_tokens, outcome.usage.cost_usd = 150, 0.15
        raised = await k.requests.RecordExecutionOutcome(outcome, metadata=orchestrator)
        assert raised.request.cost_usd == pytest.approx(0.15)
        assert raised.request.status == requests_pb2.REQUEST_STATUS_COMPLETED
        outcome.usage.prompt_tokens, outcome.usage.cost_usd = 100, 0.12
        kept = await k.requests.RecordExecutionOutcome(outcome, metadata=orchestrator)
        assert kept.request.cost_usd == pytest.approx(0.15)

        after = await usage(k, client)
        assert after.spent_usd == pytest.approx(0.15) and after.reserved_usd == 0
        assert after.remaining_usd == pytest.approx(99.85)
        (line,) = after.by_template
        assert line.key == "metered" and line.spent_usd == pytest.approx(0.15)
        assert line.executions == 1 and line.usage.prompt_tokens == 150
        (per_request,) = after.by_request
        assert per_request.key == request.request_id

        # Another execution's outcome cannot settle this request.
        outcome.execution_id = "exe_someone_else"
        error = await fails(
            k.requests.RecordExecutionOutcome(outcome, metadata=orchestrator),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason(error) == "EXECUTION_MISMATCH"
        error = await fails(
            k.requests.RecordExecutionOutcome(
                requests_pb2.RecordExecutionOutcomeRequest(
                    status=requests_pb2.REQUEST_STATUS_RUNNING
                ),
                metadata=orchestrator,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"status", "request_id", "execution_id"} - {
            "request_id",
            "execution_id",
        } | {"status"}


async def test_cancelling_releases_the_reservation(client: Client) -> None:
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("held", cost=1.0))
        request = await k.create_request(client.key, "held")
        await k.execute(client.key, request.request_id)
        assert (await usage(k, client)).reserved_usd == pytest.approx(1.0)
        cancelled = await k.requests.CancelRequest(
            requests_pb2.CancelRequestRequest(request_id=request.request_id), metadata=client.key
        )
        assert cancelled.request.status == requests_pb2.REQUEST_STATUS_CANCELLED
        assert (await usage(k, client)).reserved_usd == 0


async def test_usage_of_a_caller_without_a_client_needs_a_client_id(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.clients.GetUsage(accounts_pb2.GetUsageRequest(), metadata=client.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"client_id"}
        theirs = await k.clients.GetUsage(
            accounts_pb2.GetUsageRequest(client_id=client.client_id), metadata=client.admin
        )
        assert theirs.monthly_budget_usd == 100.0 and theirs.remaining_usd == 100.0


async def test_the_combined_budget_query_matches_the_separate_sums(client: Client) -> None:
    orchestrator = client.worker("orchestrator")
    db = client.mesh.kam.db
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("summed", cost=0.25))
        requests = [await k.create_request(client.key, "summed") for _ in range(4)]
        executions = [await k.execute(client.key, r.request_id) for r in requests[:3]]
        await k.requests.RecordExecutionOutcome(
            requests_pb2.RecordExecutionOutcomeRequest(
                request_id=requests[0].request_id,
                execution_id=executions[0],
                status=requests_pb2.REQUEST_STATUS_COMPLETED,
                usage=common_pb2.Usage(cost_usd=0.07),
            ),
            metadata=orchestrator,
        )

    def separate(s: Session) -> float:
        mine = models.ClientRequest.client_id == client.client_id
        spent = s.scalar(
            select(func.sum(models.ClientRequest.cost_usd)).where(
                mine, models.ClientRequest.charged_at >= ledger.month_start()
            )
        )
        held = s.scalar(select(func.sum(models.ClientRequest.reserved_usd)).where(mine))
        return float(spent or 0) + float(held or 0)

    combined = db.run_tx_sync(lambda tx: ledger.committed(tx, client.client_id))
    assert combined == db.run_sync(separate)
    assert combined == pytest.approx(0.07 + 2 * 0.25)


async def test_crossing_80_and_100_percent_of_the_budget_is_alerted_once_each(
    client: Client,
) -> None:
    orchestrator = client.worker("orchestrator")
    poor = await make_client(client.mesh, budget=1.0)
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("alerting", cost=0.01))

        async def charge(cost: float) -> None:
            request = await k.create_request(poor.key, "alerting")
            execution_id = await k.execute(poor.key, request.request_id)
            await k.requests.RecordExecutionOutcome(
                requests_pb2.RecordExecutionOutcomeRequest(
                    request_id=request.request_id,
                    execution_id=execution_id,
                    status=requests_pb2.REQUEST_STATUS_COMPLETED,
                    usage=common_pb2.Usage(cost_micros=round(cost * 1_000_000)),
                ),
                metadata=orchestrator,
            )

        async def alerts() -> list[tuple[int, float]]:
            answer = await usage(k, poor)
            return [(a.percent, a.spent_usd) for a in answer.alerts]

        async def audited() -> list[str]:
            events = await k.audit.ListAuditEvents(
                accounts_pb2.ListAuditEventsRequest(action_prefix="budget."),
                metadata=client.admin,
            )
            return [
                e.details["percent"]
                for e in events.events
                if e.target == f"clients/{poor.client_id}"
            ]

        await charge(0.50)
        assert await alerts() == [] and await audited() == []
        await charge(0.29)  # 79 %: not yet
        assert await alerts() == []
        await charge(0.01)  # 80 % exactly
        assert await alerts() == [(80, pytest.approx(0.80))]
        await charge(0.05)  # 85 %: already alerted this month
        assert await alerts() == [(80, pytest.approx(0.80))]
        await charge(0.15)  # 100 %
        assert await alerts() == [(80, pytest.approx(0.80)), (100, pytest.approx(1.00))]
        assert sorted(await audited()) == ["100", "80"]
        # Another client's alerts are its own.
        assert (await usage(k, client)).alerts == []
