"""A real HTTP server on loopback that receives webhooks (stdlib `http.server` in a thread) and
checks their signatures the way a client's endpoint would (docs/WEBHOOKS.md)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value

    def signature_ok(self, secret: str, tolerance: float = 300.0) -> bool:
        """Checks `Bitware-Signature: t=…,v1=…` as a receiver should: recompute the HMAC over
        `t.body`, compare in constant time, and refuse a timestamp too far from now."""
        parts = dict(item.split("=", 1) for item in self.headers["bitware-signature"].split(","))
        expected = hmac.new(
            secret.encode(), parts["t"].encode() + b"." + self.body, hashlib.sha256
        ).hexdigest()
        fresh = abs(time.time() - int(parts["t"])) <= tolerance
        return fresh and hmac.compare_digest(expected, parts["v1"])


class Receiver:
    """Answers each POST with the next of `statuses` (then 200) and records it."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.url = ""

    async def wait_for(self, count: int, seconds: float = 60.0) -> list[Received]:
        """The first `count` posts, once they arrived (the servers may share this loop)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.received)} webhooks arrived, not {count}")


@contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    state = Receiver(statuses)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.received.append(
                    Received(
                        time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
