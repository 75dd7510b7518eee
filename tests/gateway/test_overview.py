"""The Overview: GET /api/overview aggregates executions and spend as the caller may see them,
and the dashboard draws it (and refreshes Queue and Workers) in Chromium, for an admin and for a
client's user, with the Webhooks page and its delivery log. Screenshots go to `artifacts/`."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from playwright.async_api import Browser, expect

from bitware.common.v1 import common_pb2
from bitware_mesh.inprocess import InProcessMesh
from gateway import overview
from tests.common import Client, make_client
from tests.gateway import test_dashboard, test_webhooks
from tests.gateway.conftest import (
    admin,
    create_and_execute,
    gateway_client,
    gateway_settings,
    key,
    served_gateway,
)
from tests.gateway.test_dashboard import ARTIFACTS, open_page, spend
from tests.kam.helpers import PASSWORD, kam, parked_template
from tests.webhook_receiver import receiver

# Fixtures shared with the dashboard's and the webhooks' tests.
browser = test_dashboard.browser
hooked = test_webhooks.hooked


async def finished(http: httpx.AsyncClient, client: Client, execution_id: str) -> str:
    for _ in range(600):
        answer = await http.get(f"/api/executions/{execution_id}", headers=key(client))
        status: str = answer.json()["execution"]["status"]
        if status.endswith(("SUCCEEDED", "FAILED", "CANCELLED")):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{execution_id} did not finish")


async def run_some(http: httpx.AsyncClient, client: Client, succeed: int, cancel: int) -> None:
    """`succeed` executions run to the end on the offline provider; `cancel` are cancelled."""
    ids = [(await create_and_execute(http, client))[1] for _ in range(succeed)]
    for execution_id in ids:
        assert await finished(http, client, execution_id) == "EXECUTION_STATUS_SUCCEEDED"
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template(f"parked_{client.client_id[-6:]}"))
    for _ in range(cancel):
        request_id, execution_id = await create_and_execute(
            http, client, master_template=f"parked_{client.client_id[-6:]}"
        )
        answer = await http.post(f"/api/requests/{request_id}/cancel", headers=key(client))
        assert answer.status_code == 200, answer.text
        assert await finished(http, client, execution_id) == "EXECUTION_STATUS_CANCELLED"


async def test_the_overview_counts_only_what_the_caller_may_see(client: Client) -> None:
    other = await make_client(client.mesh, budget=50.0)
    async with gateway_client(gateway_settings(client.mesh)) as http:
        await run_some(http, client, succeed=2, cancel=1)
        mine = (await http.get("/api/overview", headers=key(client))).json()
        assert mine["summary"]["succeeded"] == 2 and mine["summary"]["cancelled"] == 1
        assert mine["summary"]["p50_seconds"] > 0
        assert mine["summary"]["p95_seconds"] >= mine["summary"]["p50_seconds"]
        assert len(mine["minutes"]) == 60
        assert sum(m["succeeded"] for m in mine["minutes"]) == 2
        assert max(m["in_flight"] for m in mine["minutes"]) >= 1
        assert mine["summary"]["in_flight_now"] == 0  # everything has ended
        assert mine["monthly_budget_usd"] == 100.0
        assert mine["days"][-1]["total_usd"] == sum(d["spent_usd"] for d in mine["days"])

        theirs = (await http.get("/api/overview?minutes=15", headers=key(other))).json()
        assert len(theirs["minutes"]) == 15
        assert theirs["summary"] == {
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
            "p50_seconds": None,
            "p95_seconds": None,
            "in_flight_now": 0,
        }
        assert theirs["monthly_budget_usd"] == 50.0
        # A client cannot look at another's by naming it.
        peeking = await http.get(f"/api/overview?client_id={client.client_id}", headers=key(other))
        assert peeking.status_code == 404

        everyone = (await http.get("/api/overview", headers=admin(client))).json()
        assert everyone["summary"]["succeeded"] == 2
        assert everyone["monthly_budget_usd"] == 150.0
        one = await http.get(f"/api/overview?client_id={other.client_id}", headers=admin(client))
        assert one.json()["summary"]["succeeded"] == 0

        too_long = await http.get("/api/overview?minutes=5000", headers=admin(client))
        assert too_long.status_code == 422
        assert too_long.json()["error"]["field_violations"][0]["field"] == "query.minutes"


async def test_the_staff_budget_line_adds_every_page_of_clients(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_client(client.mesh, budget=50.0)
    await make_client(client.mesh, budget=25.0)
    async with gateway_client(gateway_settings(client.mesh)) as http:
        whole = (await http.get("/api/overview", headers=admin(client))).json()
        monkeypatch.setattr(overview, "PAGE_SIZE", 1)  # one client per page
        paged = (await http.get("/api/overview", headers=admin(client))).json()
    assert whole["monthly_budget_usd"] >= 175.0
    assert paged["monthly_budget_usd"] == whole["monthly_budget_usd"]


async def test_the_overview_and_webhooks_in_chromium_for_an_admin_and_a_client_user(
    hooked: InProcessMesh, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    credentials = hooked.credentials
    client = await make_client(hooked)
    await make_client(hooked, budget=50.0)
    async with kam(hooked) as k:
        await k.create_user(client.admin, "ana@acme.test", common_pb2.ROLE_CLIENT, client.client_id)
    async with gateway_client(gateway_settings(hooked)) as http:
        await run_some(http, client, succeed=3, cancel=1)
    with receiver() as hook:
        async with served_gateway(gateway_settings(hooked)) as base:
            page, problems = await open_page(browser)
            await page.goto(f"{base}/#/login")
            await page.get_by_label("Email").fill(credentials.admin_email)
            await page.get_by_label("Password").fill(credentials.admin_password)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()

            # Webhooks: an endpoint for the client, its secret shown once; then the log fills.
            await page.get_by_role("link", name="Webhooks").click()
            await page.get_by_label("Client", exact=True).select_option(
                label=f"Acme Learning ({client.client_id})"
            )
            await page.get_by_label("URL").fill(hook.url)
            await page.get_by_label("Note").fill("billing")
            await page.get_by_role("button", name="Add endpoint").click()
            await expect(page.locator(".secret")).to_contain_text("whsec_")
            await expect(page.get_by_role("cell", name=hook.url, exact=True)).to_be_visible()
            await spend(client, 85.0)  # a request completes, and 80 % of the budget is crossed
            await hook.wait_for(2)
            log = page.get_by_role("table").filter(has_text="Attempts")
            for event in ("request.completed", "budget.threshold"):
                row = log.get_by_role("row").filter(has_text=event)
                await expect(row).to_contain_text("succeeded", timeout=20_000)
                await expect(row).to_contain_text("200")
            await page.screenshot(path=str(ARTIFACTS / "webhooks-admin.png"), full_page=True)

            await page.get_by_role("link", name="Overview").click()
            await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            await page.get_by_label("Window", exact=True).select_option(label="15 minutes")
            per_minute = page.get_by_role(
                "img", name=re.compile("^Executions finished per minute over the last 15")
            )
            await expect(per_minute).to_contain_text("3 succeeded, 0 failed, 1 cancelled")
            await expect(
                page.get_by_role("img", name=re.compile("^End-to-end time"))
            ).to_be_visible()
            await expect(
                page.get_by_role("img", name=re.compile("^Model calls in flight"))
            ).to_be_visible()
            spend_chart = page.get_by_role("img", name=re.compile("^Spend per day"))
            await expect(spend_chart).to_contain_text("budget $150.00")  # both clients' budgets
            await expect(page.get_by_text("Live · updated")).to_be_visible()
            # Hovering a chart reads its values out: here over the minute with successes.
            bar = await per_minute.locator("rect.s-ok").first.bounding_box()
            assert bar is not None
            await page.mouse.move(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)
            await expect(per_minute.locator(".readout")).to_contain_text(
                re.compile(r"succeeded: [1-9]")
            )
            await page.screenshot(path=str(ARTIFACTS / "overview-admin.png"), full_page=True)

            # One client: its own budget line.
            await page.get_by_label("Client", exact=True).select_option(
                label=f"Acme Learning ({client.client_id})"
            )
            await expect(spend_chart).to_contain_text("budget $100.00")

            # Queue and Workers redraw themselves.
            await page.get_by_role("link", name="Workers").click()
            note = page.locator("p.live")
            await expect(note).to_contain_text("Live · updated")
            first = await note.text_content()
            await expect(note).not_to_have_text(first or "", timeout=15_000)
            await expect(page.get_by_role("cell", name=re.compile("granulator-1"))).to_be_visible()
            await page.get_by_role("link", name="Queue").click()
            await expect(page.locator("p.live")).to_contain_text("every 3 s")
            await page.get_by_role("button", name="Sign out").click()

            # A client's user: only its own client's figures, and no client picker.
            await page.get_by_label("Email").fill("ana@acme.test")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            await page.get_by_role("link", name="Overview").click()
            await page.get_by_label("Window", exact=True).select_option(label="15 minutes")
            await expect(spend_chart).to_contain_text("budget $100.00")
            await expect(per_minute).to_contain_text("3 succeeded")
            await expect(page.get_by_label("Client", exact=True)).to_have_count(0)
            await expect(page.get_by_text("85 % of $100.00")).to_be_visible()
            await page.screenshot(path=str(ARTIFACTS / "overview-client.png"), full_page=True)
            await page.get_by_role("link", name="Webhooks").click()
            # The endpoint, and the two deliveries to it.
            await expect(page.get_by_role("cell", name=hook.url, exact=True)).to_have_count(3)
            await expect(
                page.get_by_role("row").filter(has_text="budget.threshold")
            ).to_be_visible()
            await page.screenshot(path=str(ARTIFACTS / "webhooks-client.png"), full_page=True)
            assert problems == [], problems
