"""Delivers an execution's new events to its WatchExecution streams.

The log lives in the database. Events this process commits are handed to the streams straight
from the commit (`publish`), so a watcher does not read the log again for them; a stream reads
the database for history, for a gap, and when only told that something changed (`notify`): on
PostgreSQL every replica LISTENs for the NOTIFY that each appended event sends, so watchers on
any replica hear of events another wrote. Streams also re-check each second, should a
notification be lost.

`EventHub.follow` is what a WatchExecution stream sends: the log after a sequence number, history
first and then live, in order and without gaps."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bitware_core.auth import Principal
from bitware_core.db import Database
from bitware_core.errors import FieldViolation, InvalidArgument
from orchestrator_server.executions import TERMINAL_EVENTS, LoggedEvent, LogPage, log_after

log = logging.getLogger("bitware.orchestrator.events")


@dataclass(eq=False)
class Subscription:
    """One stream's inbox: events published since it last looked, and a flag that wakes it."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    published: list[LoggedEvent] = field(default_factory=list)
    #: The highest sequence a notification said the log has reached (events the stream may
    #: have to read from the database, when they were not published to it).
    notified: int = 0

    def take(self) -> list[LoggedEvent]:
        events, self.published = self.published, []
        return events


class EventHub:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._listener: asyncio.Task[None] | None = None

    def publish(self, events: list[LoggedEvent]) -> None:
        """Hands committed events to the streams watching their executions."""
        for event in events:
            for subscription in self._subscriptions.get(event.execution_id, ()):
                subscription.published.append(event)
                subscription.changed.set()

    def notify(self, execution_id: str, sequence: int) -> None:
        """Says the execution's log has grown to at least `sequence`, without the events (a
        stream that has not sent them reads the database)."""
        for subscription in self._subscriptions.get(execution_id, ()):
            subscription.notified = max(subscription.notified, sequence)
            subscription.changed.set()

    def subscribers(self, execution_id: str) -> int:
        return len(self._subscriptions.get(execution_id, ()))

    @contextmanager
    def subscribe(self, execution_id: str) -> Iterator[Subscription]:
        """A subscription to the execution's new events. Subscribe before reading the log, so
        nothing committed between the read and the wait is missed."""
        subscription = Subscription()
        self._subscriptions.setdefault(execution_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscriptions = self._subscriptions[execution_id]
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[execution_id]

    async def follow(
        self, execution_id: str, after: int = 0, principal: Principal | None = None
    ) -> AsyncGenerator[list[LoggedEvent], None]:
        """The execution's events after sequence `after`: its history, then live as they are
        committed, in order and without gaps; each list is what one look found (never empty).
        Ends once a finished execution's log has all been handed out (a retried execution is
        not finished, so its followers go on past the failure). NOT_FOUND for a `principal`
        that may not see the execution.

        Events this process committed come from the subscription; the log is read again for
        the history, for a gap, for another replica's events and once a quiet second (should a
        notification be lost). Close the iterator when done (`contextlib.aclosing`), so the
        subscription ends with the caller."""
        if after < 0:
            raise InvalidArgument([FieldViolation("after_sequence", "must not be negative")])
        read = functools.partial(log_after, execution_id=execution_id)
        with self.subscribe(execution_id) as inbox:
            log = await self.db.run_tx(functools.partial(read, after=after, principal=principal))
            while True:
                if log.events:
                    after = log.events[-1].sequence
                    yield log.events
                if log.finished and after >= log.last_sequence:
                    return
                try:
                    await asyncio.wait_for(inbox.changed.wait(), timeout=1.0)
                    quiet = False
                except TimeoutError:
                    quiet = True
                inbox.changed.clear()
                fresh = [e for e in inbox.take() if e.sequence > after]
                if fresh and [e.sequence for e in fresh] == list(
                    range(after + 1, after + 1 + len(fresh))
                ):
                    last = fresh[-1]
                    log = LogPage(fresh, last.type in TERMINAL_EVENTS, last.sequence)
                elif not fresh and not quiet and inbox.notified <= after:
                    # Told of events this stream has handed out already (published to it first).
                    log = LogPage([], False, after)
                else:  # history, a gap, another replica's events, or a quiet second
                    log = await self.db.run_tx(functools.partial(read, after=after))

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
                        # "<execution id> <sequence>": the first event of the writer's
                        # transaction (its own replica's watchers got them published)
                        execution_id, _, sequence = note.payload.partition(" ")
                        self.notify(execution_id, int(sequence or 0))
            except psycopg.Error as error:
                log.warning(
                    "event listener lost its connection; reconnecting",
                    extra={"error": str(error)},
                )
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
