"""Per-attempt progress logs for WatchProgress: ordered, gap-free, resumable from a sequence
number, and forgotten a while after the attempt ends so memory does not grow without bound.

The log holds plain `ProgressEvent` values; the worker turns them into protobuf.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

# Phases, as named in bitware.worker.v1.Phase without the prefix.
ACCEPTED, PROMPT_BUILT, GENERATING = "ACCEPTED", "PROMPT_BUILT", "GENERATING"
VALIDATING, STORING = "VALIDATING", "STORING"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

Key = tuple[str, str, int]


@dataclass(frozen=True)
class ProgressEvent:
    sequence: int
    phase: str
    message: str
    fraction: float
    elements_so_far: int
    time: float


@dataclass
class StageLog:
    """The events of one stage attempt. `add` is synchronous so that callbacks (a streaming
    provider, a timer) can report without awaiting; watchers wake on every change."""

    events: list[ProgressEvent] = field(default_factory=list)
    ended_at: float | None = None
    #: Called once, when the terminal event is added.
    on_end: Callable[[], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.ended_at is not None

    def add(self, phase: str, message: str, fraction: float, elements: int = 0) -> bool:
        """Appends an event; returns False (and adds nothing) once the log has ended."""
        if self.finished:
            return False
        self.events.append(
            ProgressEvent(len(self.events) + 1, phase, message, fraction, elements, time.time())
        )
        if phase in TERMINAL:
            self.ended_at = time.monotonic()
            if self.on_end is not None:
                self.on_end()
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def follow(self, after: int) -> AsyncIterator[ProgressEvent]:
        """Events after sequence `after`, history first then live, ending with the terminal one."""
        async for batch in self.batches(after):
            for event in batch:
                yield event

    async def batches(self, after: int) -> AsyncIterator[list[ProgressEvent]]:
        """The events of `follow`, grouped: each batch is everything the log holds that was
        not yet handed out (the history at once, then what was added while the caller was busy
        with the previous batch, for example sending it), ending with the terminal event."""
        sent = max(0, after)
        while True:
            while len(self.events) <= sent:
                if self.finished:
                    return
                await self._changed.wait()
            batch = self.events[sent:]
            sent = batch[-1].sequence
            yield batch
            if batch[-1].phase in TERMINAL:
                return


class ProgressBook:
    """Every attempt's log, keyed by (execution, stage, attempt). Logs of ended attempts are
    dropped `retention` seconds after they end (checked whenever a log is opened). Ended logs
    are kept in the order they ended, so a check looks only at those due, not at every log."""

    def __init__(self, retention: float = 300.0) -> None:
        self.retention = retention
        self._logs: dict[Key, StageLog] = {}
        self._ended: deque[tuple[Key, StageLog]] = deque()

    def open(self, key: Key) -> StageLog:
        """The attempt's log, created empty if it has none."""
        self.sweep()
        stage_log = self._logs.get(key)
        if stage_log is None:
            stage_log = self._logs[key] = StageLog()
            stage_log.on_end = lambda: self._ended.append((key, stage_log))
        return stage_log

    def get(self, key: Key) -> StageLog | None:
        self.sweep()
        return self._logs.get(key)

    def sweep(self) -> None:
        cutoff = time.monotonic() - self.retention
        while self._ended:
            key, stage_log = self._ended[0]
            if stage_log.ended_at is not None and stage_log.ended_at > cutoff:
                return
            self._ended.popleft()
            if self._logs.get(key) is stage_log:
                del self._logs[key]

    def __len__(self) -> int:
        return len(self._logs)
