"""Builds and runs the gateway: `create_app(settings)` for tests and embedding, `main()` for
`python -m gateway` (uvicorn, the `BITWARE_READY gateway HOST:PORT` line, graceful stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI

from bitware_core import asgi, logs
from bitware_core.config import Settings
from bitware_core.server import process_settings
from gateway import apidocs, dashboard, errors, schemas
from gateway.metrics import Metrics
from gateway.middleware import GatewayMiddleware
from gateway.routes import (
    admin,
    auth,
    catalog,
    executions,
    overview,
    requests,
    system,
    webhooks,
)
from gateway.upstream import Upstream, UpstreamNotConfigured, addresses

log = logging.getLogger("bitware.gateway")

DESCRIPTION = """\
HTTP/JSON and Server-Sent Events in front of the Bitware Mesh gRPC servers.

Send one credential: `X-API-Key` (client programs), `x-bitware-session-token` or the
`bitware_session` cookie from `POST /api/auth/login` (people), or `Authorization: Bearer` with
`X-Worker-ID` (workers and services). Every error answers `{"error": {"code", "message",
"reason", "metadata", "field_violations"}}`; `code` is the gRPC status name, `reason` and
`metadata` (the error's ids and limits) come from the server's `ErrorInfo`.
"""


def create_app(settings: Settings) -> FastAPI:
    """The gateway app. Its lifespan opens the upstream channels (`app.state.upstream`) and
    closes them; without the lifespan, routes answer 503."""
    addresses(settings)  # fail at build time, not on the first request, when misconfigured
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.upstream = Upstream(settings)
        try:
            yield
        finally:
            upstream, app.state.upstream = app.state.upstream, None
            await upstream.close()

    app = FastAPI(
        title="Bitware Mesh gateway",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # apidocs serves /docs from files of its own
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.upstream = None
    errors.install(app)
    app.add_middleware(GatewayMiddleware, metrics=metrics)
    # Routers carry their full prefix, so a route's path is the template /metrics counts by.
    for module in (auth, requests, executions, catalog, system, overview, admin, webhooks):
        app.include_router(module.router)
    app.include_router(system.ops)
    schemas.install(app)
    dashboard.install(app)
    apidocs.install(app)
    return app


def bind(settings: Settings) -> socket.socket:
    """The gateway's listening socket (BITWARE_HOST:BITWARE_PORT; port 0 picks one)."""
    return asgi.bind(settings.server.host, settings.server.port)


class GatewayServer(asgi.AsgiServer):
    """uvicorn serving the gateway on a socket bound by `bind`; `ready` is set once it listens."""

    def __init__(self, app: FastAPI, settings: Settings, sock: socket.socket) -> None:
        super().__init__(
            app,
            sock,
            settings.server.host,
            timeout_graceful_shutdown=max(1, int(settings.server.shutdown_grace)),
            proxy_headers=False,
            # HTTPS with the servers' certificate (BITWARE_TLS_CERT/KEY); no client
            # certificate is asked for, as browsers have none.
            ssl_certfile=settings.tls.cert if settings.tls.enabled else None,
            ssl_keyfile=settings.tls.key if settings.tls.enabled else None,
        )


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, printing `BITWARE_READY gateway HOST:PORT` once up."""
    server = GatewayServer(create_app(settings), settings, bind(settings))
    # The gateway serves its own /metrics on its HTTP port.
    if not await asgi.serve(server, "gateway", server.address):
        raise SystemExit("the gateway did not start; see the log above")


def main() -> None:
    settings = process_settings("gateway")
    logs.configure(
        "gateway", as_json=settings.observability.log_json, level=settings.observability.log_level
    )
    asgi.plain_uvicorn_logs()
    try:
        asyncio.run(serve(settings))
    except (UpstreamNotConfigured, OSError) as error:  # one clear line, not a traceback
        print(f"gateway: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
