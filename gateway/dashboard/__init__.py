"""The browser dashboard: one HTML page, three scripts and one stylesheet, served as they are.

No build step and nothing fetched from elsewhere: the page talks only to this gateway's `/api`
(the session cookie set by `POST /api/auth/login` carries the user's credential), so it works on
an offline machine. `install(app)` serves the page at `/` and its files under `/dashboard/`.
The files sit next to this module so that they ship as package data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

HERE = Path(__file__).parent

# The page runs only our own script and style, and may be framed by nobody.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
    "/dashboard/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/dashboard/overview.js": ("overview.js", "text/javascript; charset=utf-8"),
}


def _file(name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    # A handler without parameters: nothing in the request chooses which file is read.
    async def serve() -> FileResponse:
        return FileResponse(HERE / name, media_type=media_type, headers=_HEADERS)

    return serve


def install(app: FastAPI) -> None:
    """Serves the dashboard at `/` and its scripts and stylesheet under `/dashboard/`."""
    for path, (name, media_type) in _FILES.items():
        app.add_api_route(path, _file(name, media_type), methods=["GET"], include_in_schema=False)
