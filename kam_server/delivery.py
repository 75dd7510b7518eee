"""Posts queued webhook deliveries: a background task of every KAM process.

The loop claims the oldest pending delivery of each endpoint that is due (so an endpoint's events
go out in order: a later one waits while an earlier one is retried) and posts each in a task of
its own, which writes the outcome; up to BATCH posts run at once. A claim is a lease
(`claimed_until`) taken in a transaction of its own, with `FOR UPDATE SKIP LOCKED` on
PostgreSQL: KAM replicas sharing a database never post one delivery at the same time, and a
delivery claimed by a process that died is taken up again when its lease runs out. The database
is the queue, so a restart loses nothing. Finished deliveries stay in the log for KEEP_DAYS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from bitware_core.db import Database, utcnow
from bitware_core.sql import Tx
from kam_server import webhooks

log = logging.getLogger("kam.webhooks")

#: Seconds one POST may take.
POST_TIMEOUT = 10.0
#: Seconds a claim lasts: well past POST_TIMEOUT, so only a dead holder's claims run out.
LEASE_SECONDS = 60.0
#: Seconds between looks at the queue when nothing was queued by this process meanwhile.
POLL_SECONDS = 1.0
#: Posts under way at once (each to a different endpoint).
BATCH = 20
#: Days a finished delivery stays in the log.
KEEP_DAYS = 30
#: Seconds between prunings of the log.
PRUNE_SECONDS = 3600.0


@dataclass(frozen=True)
class Claimed:
    seq: int
    claim: str
    event_id: str
    payload: str
    attempts: int
    created_at: datetime
    url: str
    key_id: str
    endpoint_id: str


def claim(tx: Tx, now: datetime, limit: int = BATCH) -> list[Claimed]:
    """Leases the due head of each endpoint's pending deliveries."""
    rows = tx.all(
        "SELECT d.seq, d.event_id, d.payload, d.attempts, d.created_at, e.url, e.key_id,"
        " d.endpoint_id FROM webhook_deliveries d"
        " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
        " WHERE d.status = 'pending' AND d.next_attempt_at <= :now"
        " AND (d.claimed_until IS NULL OR d.claimed_until < :now)"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id"
        "  AND p.status = 'pending' AND p.seq < d.seq)"
        f" ORDER BY d.seq LIMIT :limit{tx.lock('OF d SKIP LOCKED')}",
        {"now": tx.ts(now), "limit": limit},
    )
    claimed = []
    for seq, event, payload, attempts, at, url, key, endpoint in rows:
        created = Tx.when(at)
        assert created is not None  # the column is NOT NULL
        token = secrets.token_hex(8)
        claimed.append(Claimed(seq, token, event, payload, attempts, created, url, key, endpoint))
    tx.many(
        "UPDATE webhook_deliveries SET claim = :claim, claimed_until = :until WHERE seq = :seq",
        [
            {
                "claim": c.claim,
                "until": tx.ts(now + timedelta(seconds=LEASE_SECONDS)),
                "seq": c.seq,
            }
            for c in claimed
        ],
    )
    return claimed


def settle(
    tx: Tx, claimed: Claimed, http_status: int, error: str, base: float, now: datetime
) -> str:
    """Writes one attempt's outcome (unless the lease was lost meanwhile); returns the status."""
    attempts = claimed.attempts + 1
    retry_at = None if not error else webhooks.next_attempt(claimed.created_at, attempts, base, now)
    status = "succeeded" if not error else ("pending" if retry_at else "failed")
    tx.execute(
        "UPDATE webhook_deliveries SET status = :status, attempts = :attempts,"
        " last_http_status = :code, last_error = :error, last_attempt_at = :now,"
        " next_attempt_at = :next, claim = '', claimed_until = NULL"
        " WHERE seq = :seq AND claim = :claim",
        {
            "status": status,
            "attempts": attempts,
            "code": http_status,
            "error": error[:500],
            "now": tx.ts(now),
            "next": tx.ts(retry_at),
            "seq": claimed.seq,
            "claim": claimed.claim,
        },
    )
    return status


def prune(tx: Tx, now: datetime) -> int:
    """Deletes finished deliveries older than KEEP_DAYS; returns how many."""
    cursor = tx.execute(
        "DELETE FROM webhook_deliveries WHERE status != 'pending' AND created_at < :before",
        {"before": tx.ts(now - timedelta(days=KEEP_DAYS))},
    )
    return int(cursor.rowcount)


class Deliverer:
    """The background task that works the deliveries table."""

    def __init__(self, db: Database, key: webhooks.WebhookKey, retry_base: float) -> None:
        self.db = db
        self.key = key
        self.retry_base = retry_base
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._posting: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        db.on_commit(self._committed)

    def _committed(self, info: dict[str, Any]) -> None:
        # On the database thread: a transaction queued deliveries, so look now, not in a second.
        if info.pop(webhooks.QUEUED, False) and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._http = httpx.AsyncClient(
            timeout=POST_TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": "Bitware-Webhooks/1"},
        )
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops claiming and abandons posts under way: their leases run out and whichever KAM
        process is running then posts them again (delivery is at least once)."""
        tasks = [self._task] if self._task is not None else []
        for task in [*tasks, *self._posting]:
            task.cancel()
        for task in [*tasks, *self._posting]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        # Each claimed delivery is posted by a task of its own, and the loop claims again at
        # once: a slow endpoint holds back only its own later events, never another endpoint's.
        pruned_at = 0.0
        while True:
            self._wake.clear()
            room = BATCH - len(self._posting)
            claimed: list[Claimed] = []
            try:
                if time.monotonic() - pruned_at > PRUNE_SECONDS:
                    await self.db.run_tx(lambda tx: prune(tx, utcnow()))
                    pruned_at = time.monotonic()
                if room > 0:
                    claimed = await self.db.run_tx(
                        functools.partial(claim, now=utcnow(), limit=room)
                    )
            except Exception:  # a database hiccup must not end deliveries for good
                log.exception("cannot read the webhook deliveries")
            for one in claimed:
                task = asyncio.create_task(self._deliver(one))
                self._posting.add(task)
                task.add_done_callback(self._posted)
            if claimed:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _posted(self, task: asyncio.Task[None]) -> None:
        # The endpoint's next event may be due now.
        self._posting.discard(task)
        self._wake.set()

    async def _deliver(self, claimed: Claimed) -> None:
        http_status, error = await self._post(claimed)
        try:
            status = await self.db.run_tx(
                lambda tx: settle(tx, claimed, http_status, error, self.retry_base, utcnow())
            )
        except Exception:  # the lease runs out and the delivery is tried again
            log.exception("cannot record webhook delivery %s", claimed.event_id)
            return
        log.info(
            "webhook %s to %s: %s%s",
            claimed.event_id,
            claimed.endpoint_id,
            status,
            f" ({error})" if error else "",
        )

    async def _post(self, claimed: Claimed) -> tuple[int, str]:
        """(HTTP status or 0, error or "" on success)."""
        if claimed.key_id != self.key.id:
            return 0, (
                "KAM's webhook key is not the one this endpoint's secret came from "
                "(BITWARE_WEBHOOK_KEY_FILE changed); restore it or re-create the endpoint"
            )
        assert self._http is not None
        body = claimed.payload.encode()
        secret = self.key.secret_for(claimed.endpoint_id)
        headers = {
            "Content-Type": "application/json",
            "Bitware-Event-Id": claimed.event_id,
            "Bitware-Signature": webhooks.sign(secret, int(time.time()), body),
        }
        try:
            response = await self._http.post(claimed.url, content=body, headers=headers)
        except httpx.HTTPError as problem:
            detail = str(problem)
            return 0, f"{type(problem).__name__}: {detail}" if detail else type(problem).__name__
        if 200 <= response.status_code < 300:
            return response.status_code, ""
        return response.status_code, f"HTTP {response.status_code}"
