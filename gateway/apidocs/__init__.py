"""`/docs`: Swagger UI over the gateway's OpenAPI, from files shipped in this package, so that it
works on a machine without internet access (FastAPI's own page loads Swagger UI from a CDN).

The files are swagger-ui-dist 5.35.0 as published on npm (Apache-2.0; `LICENSE`, `NOTICE` and
`swagger-ui-bundle.js.LICENSE.txt` next to them): `swagger-ui-bundle.js`, `swagger-ui.css` and
`favicon-32x32.png`. Swagger UI 5 is needed for FastAPI's OpenAPI 3.1 (the `swagger-ui-bundle`
PyPI package ships 4.15, which cannot render 3.1). To update: `npm pack swagger-ui-dist@5` and
copy the same files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

HERE = Path(__file__).parent
ASSETS = "/docs/assets"
_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
#: The files never change for one gateway version; browsers may keep them a day.
_CACHE = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}


def _file(name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    # A handler without parameters: nothing in the request chooses which file is read.
    async def serve() -> FileResponse:
        return FileResponse(HERE / name, media_type=media_type, headers=_CACHE)

    return serve


def install(app: FastAPI) -> None:
    """Serves Swagger UI at `/docs` and its files under `/docs/assets/`. The app must be made
    with `docs_url=None` (FastAPI's page would win)."""
    assert app.docs_url is None, "create the FastAPI app with docs_url=None"
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} — API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    ).body

    async def docs() -> HTMLResponse:
        return HTMLResponse(page)

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    for name, media_type in _FILES.items():
        app.add_api_route(
            f"{ASSETS}/{name}", _file(name, media_type), methods=["GET"], include_in_schema=False
        )
