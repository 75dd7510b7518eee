"""Wakes WatchExecution streams when their execution's log grows. The log itself lives in the
database; this only saves streams from polling. On PostgreSQL every replica LISTENs for the
NOTIFY that each appended event sends, so a watcher on any replica hears of events written by
another at once; streams still re-check each second, should a notification be lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("bitware.orchestrator.events")


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener: asyncio.Task[None] | None = None

    def notify(self, execution_id: str) -> None:
        for waiter in self._waiters.get(execution_id, ()):
            waiter.set()

    def subscribers(self, execution_id: str) -> int:
        return len(self._waiters.get(execution_id, ()))

    @contextmanager
    def subscribe(self, execution_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the execution's log grows. Subscribe before reading the log,
        so nothing written between the read and the wait is missed."""
        waiter = asyncio.Event()
        self._waiters.setdefault(execution_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters[execution_id]
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[execution_id]

    def listen(self, conninfo: str, channel: str) -> None:
        """Starts hearing other replicas' events through PostgreSQL LISTEN."""
        self._listener = asyncio.create_task(self._listen(conninfo, channel))

    async def _listen(self, conninfo: str, channel: str) -> None:
        import psycopg  # only needed on PostgreSQL

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {channel}")
                    async for note in connection.notifies():
                        self.notify(note.payload)
            except psycopg.Error as error:
                log.warning(
                    "event listener lost its connection; reconnecting", extra={"error": str(error)}
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
