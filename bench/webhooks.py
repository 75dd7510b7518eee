"""How fast KAM's deliverer posts queued webhook events: N events for each of E endpoints of one
client, queued as KAM queues them, then one Deliverer (the background task of a KAM process)
posts them to a stdlib HTTP receiver on 127.0.0.1, which answers 200.

    .venv/bin/python bench/webhooks.py [events per endpoint, default 200] [endpoints, default 4]

Prints events per second overall and the time to the last delivery. Each endpoint's events go
one at a time, in order; endpoints go side by side. SQLite in a temporary folder; bounded by the
count and a 300 s limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from bitware_core.db import Database
from kam_server import models, webhooks
from kam_server.delivery import Deliverer

LIMIT_SECONDS = 300.0


class Counter:
    """Posts received; `done` is set (from the server's thread) when `goal` are in."""

    def __init__(self, goal: int, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self.goal = goal
        self.lock = threading.Lock()
        self.done = asyncio.Event()
        self.loop = loop

    def add(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == self.goal:
                self.loop.call_soon_threadsafe(self.done.set)


def receiver(counter: Counter) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            counter.add()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def main(per_endpoint: int, endpoints: int) -> None:
    counter = Counter(per_endpoint * endpoints, asyncio.get_running_loop())
    server = receiver(counter)
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    with tempfile.TemporaryDirectory() as scratch:
        db = Database(f"sqlite:///{scratch}/kam.db")
        db.migrate("kam", str(Path(models.__file__).parent / "migrations"), models.KamBase.metadata)
        key = webhooks.WebhookKey.load(Path(scratch) / "webhook.key")

        def setup(session: Session) -> None:
            session.add(
                models.Client(
                    id="cli_bench",
                    company_name="Bench",
                    contact_email="bench@example.test",
                    tier="enterprise",
                    monthly_budget_usd=1e6,
                )
            )
            session.flush()
            for n in range(endpoints):
                session.add(
                    models.WebhookEndpoint(
                        id=f"whe_{n}", client_id="cli_bench", url=url, event_types=[], key_id=key.id
                    )
                )

        await db.run(setup)
        for n in range(per_endpoint):
            await db.run_tx(
                lambda tx, i=n: webhooks.enqueue(tx, "cli_bench", "budget.threshold", {"n": i})
            )
        total = per_endpoint * endpoints
        deliverer = Deliverer(db, key, retry_base=10.0)
        started = time.perf_counter()
        deliverer.start()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(counter.done.wait(), LIMIT_SECONDS)
        finally:
            elapsed = time.perf_counter() - started
            await deliverer.stop()
            db.close()
            server.shutdown()
    print(f"{counter.count} of {total} events to {endpoints} endpoints in {elapsed:.2f} s")
    print(
        f"{counter.count / elapsed:.0f} events/s overall, {counter.count / endpoints / elapsed:.0f}/s per endpoint"
    )


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [200, 4][len(args) :])))
