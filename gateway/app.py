"""Builds and runs the gateway: `create_app(settings)` for tests and embedding, `main()` for
`python -m gateway` (uvicorn, the `BITWARE_READY gateway HOST:PORT` line, graceful stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI

from bitware_core import logs
from bitware_core.config import Settings
from bitware_core.server import ListenError, process_settings, ready_line
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

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

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
    """The listening socket, bound here so that port 0 gives a port we can print."""
    family = socket.AF_INET6 if ":" in settings.server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.server.host, settings.server.port))
    except OSError as error:
        sock.close()
        raise ListenError(
            f"cannot listen on {settings.server.host}:{settings.server.port}: {error.strerror}"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class GatewayServer(uvicorn.Server):
    """uvicorn serving the gateway on a socket bound by `bind`; `ready` is set once it listens."""

    def __init__(self, app: FastAPI, settings: Settings, sock: socket.socket) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                log_config=None,  # our handler, from bitware_core.logs, formats every line
                access_log=False,  # the middleware logs each request with its request id
                timeout_graceful_shutdown=max(1, int(settings.server.shutdown_grace)),
                proxy_headers=False,
                # HTTPS with the servers' certificate (BITWARE_TLS_CERT/KEY); no client
                # certificate is asked for, as browsers have none.
                ssl_certfile=settings.tls.cert if settings.tls.enabled else None,
                ssl_keyfile=settings.tls.key if settings.tls.enabled else None,
            )
        )
        self.sock = sock
        self.address = f"{settings.server.host}:{sock.getsockname()[1]}"
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Like uvicorn's, but without re-raising the signal after the graceful stop: the gateway
        # then exits 0 on SIGTERM, as the gRPC servers do (a supervisor can tell a stop from a
        # crash).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def run_until_stopped(self) -> None:
        """Serves until `should_exit` (or SIGTERM/SIGINT, uvicorn's handlers); closes the socket."""
        try:
            await self.serve(sockets=[self.sock])
        finally:
            self.sock.close()


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM or SIGINT, printing `BITWARE_READY gateway HOST:PORT` once up."""
    server = GatewayServer(create_app(settings), settings, bind(settings))
    serving = asyncio.create_task(server.run_until_stopped())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if server.ready.is_set():
        # The gateway serves its own /metrics on its HTTP port.
        print(ready_line("gateway", server.address, server.address), flush=True)
        log.info("serving", extra={"address": server.address})
    await serving
    if not server.ready.is_set():
        raise SystemExit("the gateway did not start; see the log above")


class _PlainUvicornRecords(logging.Filter):
    """uvicorn attaches an ANSI-coloured copy of some messages; our log lines carry extras as
    fields, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def main() -> None:
    settings = process_settings("gateway")
    logs.configure(
        "gateway", as_json=settings.observability.log_json, level=settings.observability.log_level
    )
    logging.getLogger("uvicorn.error").addFilter(_PlainUvicornRecords())
    try:
        asyncio.run(serve(settings))
    except (UpstreamNotConfigured, OSError) as error:  # one clear line, not a traceback
        print(f"gateway: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
