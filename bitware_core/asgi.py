"""Serving an HTTP (ASGI) app with uvicorn the way every mesh process serves, for the gateway and
the local model's process: on a socket bound first (so that port 0 gives a port to print), the
`BITWARE_READY` line once it listens, and on SIGTERM or SIGINT a graceful stop that exits 0, as
the gRPC servers do (a supervisor can tell a stop from a crash). Log lines go through our
handler (`bitware_core.logs`); call `plain_uvicorn_logs` once at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from bitware_core.server import ListenError, ready_line

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket, bound here so that port 0 gives a port we can print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class AsgiServer(uvicorn.Server):
    """uvicorn serving `app` on `sock` (from `bind`); `ready` is set once it listens. `options`
    are more `uvicorn.Config` fields; uvicorn's own logging setup and access log stay off."""

    def __init__(self, app: Any, sock: socket.socket, host: str, **options: Any) -> None:
        super().__init__(uvicorn.Config(app, log_config=None, access_log=False, **options))
        self.sock = sock
        self.address = f"{host}:{sock.getsockname()[1]}"
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Like uvicorn's, but without re-raising the signal after the graceful stop: the process
        # then exits 0 on SIGTERM.
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
        """Serves until `should_exit` (or SIGTERM/SIGINT); closes the socket."""
        try:
            await self.serve(sockets=[self.sock])
        finally:
            self.sock.close()


async def serve(server: AsgiServer, service: str, metrics_address: str = "") -> bool:
    """Serves until stopped, printing `BITWARE_READY <service> HOST:PORT` once it listens;
    whether it ever did (False: it failed at start-up, uvicorn has logged why)."""
    serving = asyncio.create_task(server.run_until_stopped())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    if server.ready.is_set():
        print(ready_line(service, server.address, metrics_address), flush=True)
        logging.getLogger(f"bitware.{service}").info("serving", extra={"address": server.address})
    await serving
    return server.ready.is_set()


class _PlainRecords(logging.Filter):
    """uvicorn attaches an ANSI-coloured copy of some messages; our log lines carry extras as
    fields, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def plain_uvicorn_logs() -> None:
    logging.getLogger("uvicorn.error").addFilter(_PlainRecords())
