"""Wakes WatchExecution streams when their execution's log grows. The log itself lives in the
database; this only saves streams from polling (they still re-check each second, which also
covers events written by other replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

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
