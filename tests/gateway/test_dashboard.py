"""The dashboard in a real browser: Playwright drives Debian's Chromium against the real gateway
(uvicorn on a free port) over the real mesh. The admin signs in, picks a client, creates and
executes a request, watches the progress bar reach 100 %, opens the structure tree, and manages
an API key; a client's user retries a failed request; an execution on a (scripted) model shows
each of its model calls. Screenshots go to `artifacts/` (git-ignored)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2
from bitware.worker.v1 import worker_pb2
from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_mesh.inprocess import start_mesh
from granulator_server.domain import generate_offline
from tests.common import Client, make_client
from tests.gateway.conftest import gateway_settings, served_gateway
from tests.granulator.fake_openai import FakeOpenAI, failure, reply
from tests.granulator.test_model_calls import QUIZ, run_quiz
from tests.kam.helpers import PASSWORD, kam, parked_template
from tests.orchestrator.conftest import add_template, stage
from tests.orchestrator.scripted_worker import ScriptedWorker, Step

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


async def test_the_page_and_its_files_are_served_without_touching_the_api(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/app.js"' in page.text
    assert '<link rel="stylesheet" href="/dashboard/app.css">' in page.text
    script = await http.get("/dashboard/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert (await http.get("/dashboard/app.css")).headers["content-type"].startswith("text/css")
    # Only those three files: nothing else next to them (the Python module) is served.
    assert (await http.get("/dashboard/__init__.py")).status_code == 404
    assert (await http.get("/?name=__init__.py")).text == page.text
    # The page does not shadow the API: an unknown API path is still the JSON 404.
    missing = await http.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    assert "/" not in (await http.get("/openapi.json")).json()["paths"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    try:
        playwright = await async_playwright().start()
    except Exception as error:  # the report must say why, whatever Playwright raised
        pytest.fail(f"Playwright could not start: {error}")
    try:
        try:
            launched = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
        except Exception as error:
            pytest.fail(
                f"Chromium at {CHROMIUM} could not be launched by Playwright (install Debian's "
                f"`chromium` package; never `playwright install`): {error}"
            )
        try:
            yield launched
        finally:
            await launched.close()
    finally:
        await playwright.stop()


async def open_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page that records the script errors it meets, so that a broken view fails the test."""
    # Reduced motion: the progress bar jumps instead of sliding, so a screenshot shows it whole.
    page = await browser.new_page(viewport={"width": 1280, "height": 900}, reduced_motion="reduce")
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    return page, problems


async def spend(client: Client, usd: float) -> None:
    """Charges the client `usd` through KAM, as if an execution had cost that."""
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, parked_template("spent_before", cost=0.01))
        request = await k.create_request(client.key, "spent_before", topic="Earlier spending")
        execution_id = await k.execute(client.key, request.request_id)
        await k.requests.RecordExecutionOutcome(
            requests_pb2.RecordExecutionOutcomeRequest(
                request_id=request.request_id,
                execution_id=execution_id,
                status=requests_pb2.REQUEST_STATUS_COMPLETED,
                usage=common_pb2.Usage(cost_micros=round(usd * 1_000_000)),
            ),
            metadata=client.worker("orchestrator"),
        )


async def test_admin_runs_a_request_and_reads_its_structure_in_the_browser(
    client: Client, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    credentials = client.mesh.credentials
    await spend(client, 85.0)  # of its $100: the usage page shows the 80 % budget alert
    async with served_gateway(gateway_settings(client.mesh)) as base:
        page, problems = await open_page(browser)
        await page.goto(f"{base}/")
        await expect(page).to_have_url(re.compile(r"#/login$"))

        # A wrong password is said in words, and the page stays on the form.
        await page.get_by_label("Email").fill(credentials.admin_email)
        await page.get_by_label("Password").fill("not the password")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("do not match")
        problems.clear()  # the browser logs the 401 itself

        await page.get_by_label("Password").fill(credentials.admin_password)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
        await expect(page.get_by_text(f"{credentials.admin_email} · admin")).to_be_visible()
        await page.get_by_role("link", name="Requests", exact=True).click()
        await expect(page.get_by_role("heading", name="Requests", exact=True)).to_be_visible()

        # The admin works on behalf of a client, chosen by name.
        await page.get_by_label("Client", exact=True).select_option(
            label=f"Acme Learning ({client.client_id})"
        )
        await page.get_by_label("Topic").fill("AI Development")
        await page.get_by_label("Structure type").select_option("course")
        await page.get_by_label("Audience").fill("beginners")
        await page.get_by_label("Granularity").select_option("2")
        await page.get_by_label("Urgency").select_option("high")
        await page.get_by_role("button", name="Create and execute").click()

        await expect(page).to_have_url(re.compile(r"#/executions/exe_"))
        progress = page.get_by_role("progressbar", name="Execution progress")
        await expect(progress).to_have_attribute("aria-valuenow", "100", timeout=60_000)
        await expect(progress).to_contain_text("100 %")
        await expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded")
        timeline = page.get_by_role("list", name="Stage timeline")
        await expect(timeline.get_by_text("succeeded").first).to_be_visible()
        await expect(page.get_by_role("list", name="Event log")).to_contain_text(
            "execution succeeded"
        )
        facts = page.get_by_label("Cost and token usage")
        await expect(facts).to_contain_text("offline provider")
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # The structure: a collapsible tree with a JSON download.
        await page.get_by_role("link", name="Open the structure").click()
        await expect(page.get_by_role("heading", name="Structure: course")).to_be_visible()
        tree = page.get_by_role("list", name="Structure")
        # The first level is open; deeper nodes start closed. Expand the first closed one.
        summary = tree.locator("details:not([open]) > summary").first
        element_id = await summary.evaluate("summary => summary.parentElement.dataset.element")
        node = tree.locator(f'details[data-element="{element_id}"]')
        await expect(node.locator(":scope > ul")).to_be_hidden()
        await summary.click()
        await expect(node).to_have_attribute("open", "")
        await expect(node.locator(":scope > ul > li").first).to_be_visible()
        download = page.get_by_role("link", name="Download JSON")
        href = await download.get_attribute("href")
        assert href is not None and href.endswith("?download=1")
        answer = await page.request.get(f"{base}{href}")
        assert answer.ok
        assert "attachment" in answer.headers["content-disposition"]
        assert (await answer.json())["elements"]
        await page.screenshot(path=str(ARTIFACTS / "dashboard-structure.png"), full_page=True)

        # The request list shows it completed, with its cost.
        await page.get_by_role("link", name="Requests", exact=True).click()
        row = page.get_by_role("row").filter(has_text="AI Development")
        await expect(row).to_contain_text("completed")
        await expect(row.get_by_role("link", name="Structure")).to_be_visible()
        await page.screenshot(path=str(ARTIFACTS / "dashboard-requests.png"), full_page=True)

        # Queue and workers: the registered granulator with its load.
        await page.get_by_role("link", name="Workers").click()
        await expect(page.get_by_role("cell", name=re.compile("granulator-1"))).to_be_visible()
        await expect(page.get_by_text("healthy")).to_be_visible()
        await page.get_by_role("link", name="Queue").click()
        await expect(page.get_by_role("row", name=re.compile("^high"))).to_be_visible()

        # Usage against budget, drawn as a chart.
        await page.get_by_role("link", name="Usage").click()
        await page.get_by_label("Client", exact=True).select_option(
            label=f"Acme Learning ({client.client_id})"
        )
        await expect(page.get_by_role("img", name=re.compile("monthly budget"))).to_be_visible()
        alerts = page.get_by_role("list", name="Budget alerts")
        await expect(alerts).to_contain_text("80 % of the monthly budget reached")
        await expect(alerts.get_by_role("listitem")).to_have_count(1)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-usage.png"), full_page=True)

        # API keys: create a read-only one that expires (its secret shown once), then revoke it.
        await page.get_by_role("link", name="API keys").click()
        await page.get_by_label("Name").fill("browser key")
        await page.get_by_label("Scopes").select_option(label="read only")
        await page.get_by_label(re.compile("^Expires")).fill("2099-12-31")
        await page.get_by_role("button", name="Create API key").click()
        await expect(page.locator(".secret")).to_contain_text("bw")
        key_row = page.get_by_role("row").filter(has_text="browser key")
        await expect(key_row.get_by_role("cell", name="read", exact=True)).to_be_visible()
        await expect(key_row).to_contain_text("2099")
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Revoke browser key").click()
        await expect(key_row).to_contain_text("revoked")

        # A client created here with no budget: executing for it is refused, in words.
        await page.get_by_role("link", name="Clients").click()
        await expect(page.get_by_role("cell", name=re.compile("Acme Learning"))).to_be_visible()
        await page.get_by_label("Company").fill("Thrifty Ltd")
        await page.get_by_label("Contact email").fill("ops@thrifty.test")
        await page.get_by_label("Monthly budget (USD)").fill("0")
        await page.get_by_role("button", name="Create client").click()
        await expect(page.get_by_role("alert")).to_contain_text("Created Thrifty Ltd")
        await expect(page.get_by_role("cell", name=re.compile("Thrifty Ltd"))).to_be_visible()
        await page.get_by_role("link", name="Requests", exact=True).click()
        client_picker = page.get_by_label("Client", exact=True)
        thrifty = client_picker.locator("option", has_text="Thrifty Ltd")
        await client_picker.select_option(await thrifty.get_attribute("value"))
        await page.get_by_label("Topic").fill("Budgeting")
        await page.get_by_role("button", name="Create and execute").click()
        await expect(page.get_by_role("alert")).to_contain_text("budget")
        await expect(page).to_have_url(re.compile(r"#/requests$"))
        pending = page.get_by_role("row").filter(has_text="Budgeting")
        await expect(pending).to_contain_text("pending")
        await expect(pending.get_by_role("button", name="Execute")).to_be_visible()
        await page.screenshot(path=str(ARTIFACTS / "dashboard-refused.png"))
        problems.clear()  # the browser logs the refused call itself

        await page.get_by_role("link", name="Users").click()
        await expect(
            page.get_by_role("cell", name=re.compile(credentials.admin_email))
        ).to_be_visible()

        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"#/login$"))
        assert problems == [], problems


async def test_the_retry_button_retries_the_request_through_kam(
    client: Client, browser: Browser
) -> None:
    await add_template(client.mesh, "two_stages", [stage(1), stage(2, max_attempts=1)])
    refused = Step(error_class=worker_pb2.ERROR_CLASS_INVALID_INPUT)
    worker = ScriptedWorker("once-bad", "scripted", [Step(), refused], Step())
    await worker.start(client.mesh, client.admin)
    try:
        async with kam(client.mesh) as k:
            request = await k.create_request(client.key, "two_stages", topic="Retry in browser")
            execution_id = await k.execute(client.key, request.request_id)
            for _ in range(300):
                if (await k.get_request(client.key, request.request_id)).status == (
                    requests_pb2.REQUEST_STATUS_FAILED
                ):
                    break
                await asyncio.sleep(0.1)
            # The client's own user: the orchestrator would refuse it a RetryExecution.
            await k.create_user(
                client.admin, "learner@acme.test", common_pb2.ROLE_CLIENT, client.client_id
            )
        async with served_gateway(gateway_settings(client.mesh)) as base:
            page, problems = await open_page(browser)
            await page.goto(f"{base}/")
            await page.get_by_label("Email").fill("learner@acme.test")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            problems.clear()  # the browser logs the signed-out page's own 401s
            await page.goto(f"{base}/#/executions/{execution_id}")
            await expect(page.get_by_role("heading", level=1)).to_contain_text("failed")
            await page.get_by_role("button", name="Retry from the failed stage").click()
            await expect(page.get_by_role("heading", level=1)).to_contain_text(
                "succeeded", timeout=30_000
            )
            assert not problems, problems
        async with kam(client.mesh) as k:
            retried = await k.get_request(client.key, request.request_id)
        # The button went through KAM: the request followed the run and counts the retry.
        assert retried.status == requests_pb2.REQUEST_STATUS_COMPLETED
        assert retried.retries == 1 and retried.job_id
    finally:
        await worker.stop()


async def test_the_execution_view_shows_every_model_call(
    tmp_path: Path, fake_openai: FakeOpenAI, browser: Browser
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(
            base_url=fake_openai.base_url, api_key="sk-test", timeout=5.0, max_retries=1
        ),
    )
    fake_openai.add(
        failure(503, "the model is loading"),
        reply(generate_offline(QUIZ, "Rust", "", 2, {}), prompt_tokens=700, completion_tokens=400),
    )
    mesh = await start_mesh(tmp_path, base=settings)
    try:
        client = await make_client(mesh)
        execution = await run_quiz(client)
        credentials = mesh.credentials
        async with served_gateway(gateway_settings(mesh)) as base:
            page, problems = await open_page(browser)
            await page.goto(f"{base}/#/login")
            await page.get_by_label("Email").fill(credentials.admin_email)
            await page.get_by_label("Password").fill(credentials.admin_password)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
            await page.goto(f"{base}/#/executions/{execution.execution_id}")

            calls = page.get_by_role("list", name="Model calls")
            items = calls.locator(":scope > li")
            await expect(items).to_have_count(2)
            await expect(items.nth(0)).to_contain_text("failed")
            await expect(items.nth(0)).to_contain_text("first call")
            await expect(items.nth(1)).to_contain_text("retry: the server failed")
            await expect(items.nth(1)).to_contain_text("700 in / 400 out")
            # Opened, a call shows the messages sent and the error or the reply.
            await items.nth(0).locator("summary").click()
            await expect(items.nth(0).locator(".error-words")).to_contain_text(
                "the model is loading"
            )
            await items.nth(1).locator("summary").click()
            await expect(items.nth(1)).to_contain_text("max_tokens=")
            await expect(items.nth(1).locator(".message.reply pre")).to_contain_text("Rust")
            await expect(items.nth(1).locator(".message").first).to_contain_text("system")
            await page.screenshot(path=str(ARTIFACTS / "dashboard-calls.png"), full_page=True)
            assert problems == [], problems
    finally:
        await mesh.stop()
