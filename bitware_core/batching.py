"""Group commit for small writes of the hot path (the orchestrator's acceptances, outcomes and
"reported to KAM" marks; KAM's outcome reports were measured and rarely coincide): writes that
arrive while an earlier one is under way go into the database together, in one transaction,
instead of one transaction each.

Nothing waits to be batched: a write that finds the writer idle starts at once, so an idle mesh
sees the same latency as before; under load the writes that queued up behind a transaction share
the next one (the orchestrator's claim takes up to `queue.CLAIM_BATCH` stages, whose handshakes
and results tend to come back together).

Each piece of work behaves as if it ran alone. Its result (or exception) is its own, and the
pieces of a batch run in the order of their keys (what each locks first, e.g. the execution id;
in arrival order for one key), so that two batches never lock two executions in opposite orders
(PostgreSQL). When any piece of a batch raises, the whole transaction is rolled back and each
piece runs again in a transaction of its own, so one piece's error (a StaleAttempt, a refusal, a
bug) never undoes or changes another's write."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bitware_core.db import Database
from bitware_core.sql import Tx

log = logging.getLogger("bitware.batching")
T = TypeVar("T")
#: The most pieces of work one transaction takes.
BATCH_MOST = 64


@dataclass
class _Work:
    key: str
    work: Callable[[Tx], Any]
    done: asyncio.Future[Any]


def _all(works: list[Callable[[Tx], Any]], tx: Tx) -> list[Any]:
    return [work(tx) for work in works]


class TxBatcher:
    """Runs transaction work (`run`) alone when the database is free, together with whatever else
    arrived meanwhile when it is not. `writers` transactions may be under way at once (one on
    SQLite, which has one writer anyway)."""

    def __init__(self, db: Database, writers: int = 1) -> None:
        self.db = db
        self.writers = writers
        self._pending: list[_Work] = []
        self._running: set[asyncio.Task[None]] = set()
        #: Writers whose loop has not ended. Counted by the loop itself, not by the tasks' done
        #: callbacks: those run a step after the loop ends, and work queued in between would
        #: find no writer started for it and wait forever.
        self._writing = 0
        #: Transactions run and pieces of work they carried (for tests and benches).
        self.transactions = 0
        self.pieces = 0

    async def run(self, key: str, work: Callable[[Tx], T]) -> T:
        """Runs `work(tx)` in a transaction, perhaps shared with other work; `key` names what
        it locks first (the execution id)."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append(_Work(key, work, done))
        if self._writing < self.writers:
            self._writing += 1
            task = asyncio.create_task(self._write())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await done

    async def _write(self) -> None:
        try:
            while self._pending:
                taken, self._pending = self._pending[:BATCH_MOST], self._pending[BATCH_MOST:]
                batch = [item for item in taken if not item.done.done()]  # skip cancelled callers
                try:
                    await self._commit(batch)
                finally:
                    for item in batch:  # only when this writer itself was cancelled (stopping)
                        if not item.done.done():
                            item.done.cancel()
        finally:
            # No await between the loop's last look at _pending and this: work queued from now
            # on starts a writer of its own.
            self._writing -= 1

    async def _commit(self, batch: list[_Work]) -> None:
        if not batch:
            return
        if len(batch) > 1 and await self._together(batch):
            return
        for item in batch:
            try:
                result = await self.db.run_tx(item.work)
            except Exception as error:
                if not item.done.done():
                    item.done.set_exception(error)
            else:
                if not item.done.done():
                    item.done.set_result(result)
            self.transactions += 1
            self.pieces += 1

    async def _together(self, batch: list[_Work]) -> bool:
        """Runs the batch in one transaction and answers each piece; False when any piece
        raised: the transaction is rolled back and each piece is to run alone for its own
        answer."""
        batch.sort(key=lambda item: item.key)  # stable: one key's work keeps its order
        try:
            results = await self.db.run_tx(functools.partial(_all, [item.work for item in batch]))
        except Exception:
            log.debug("a shared transaction failed; its pieces run alone", exc_info=True)
            return False
        self.transactions += 1
        self.pieces += len(batch)
        for item, result in zip(batch, results, strict=True):
            if not item.done.done():
                item.done.set_result(result)
        return True

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
