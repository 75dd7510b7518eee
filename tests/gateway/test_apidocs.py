"""`/docs` works offline: Swagger UI's page, script and stylesheet come from the gateway itself,
and in Chromium with every other address closed the page renders the gateway's operations."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Browser, Route, expect

from tests.common import Client
from tests.gateway.conftest import gateway_settings, served_gateway
from tests.gateway.test_dashboard import ARTIFACTS, browser, open_page

__all__ = ["browser"]  # the fixture, shared with the dashboard's browser tests


async def test_docs_name_only_files_the_gateway_serves(http: httpx.AsyncClient) -> None:
    page = await http.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page.text), page.text
    links = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", page.text)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(links)
    for link in links:
        asset = await http.get(link)
        assert asset.status_code == 200, link
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    # Only the shipped files are served, nothing else from the package's folder.
    assert (await http.get("/docs/assets/__init__.py")).status_code == 404
    assert (await http.get("/docs/assets/LICENSE")).status_code == 404


async def test_docs_render_in_chromium_with_the_network_closed(
    client: Client, browser: Browser
) -> None:
    async with served_gateway(gateway_settings(client.mesh)) as base:
        page, problems = await open_page(browser)
        elsewhere: list[str] = []

        async def only_the_gateway(route: Route) -> None:
            if route.request.url.startswith(f"{base}/"):
                await route.continue_()
            else:  # the network is closed: anything not from the gateway fails to load
                elsewhere.append(route.request.url)
                await route.abort("internetdisconnected")

        await page.route("**/*", only_the_gateway)
        await page.goto(f"{base}/docs")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
            "Bitware Mesh gateway"
        )
        operation = page.locator(".opblock-summary-path", has_text="/api/requests/{request_id}")
        await expect(operation.first).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "gateway-docs.png"))
        await page.close()
    assert elsewhere == []
    assert problems == []
