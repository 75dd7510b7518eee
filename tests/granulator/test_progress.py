"""The granulator's per-attempt progress logs: batches of what accumulated, and ended logs
dropped once their retention has passed, in the order they ended, running ones never."""

from __future__ import annotations

import asyncio

from granulator_server import progress
from granulator_server.progress import ProgressBook


async def test_batches_hand_out_what_accumulated_since_the_last_batch() -> None:
    stage_log = ProgressBook().open(("ex", "s", 1))
    stage_log.add(progress.ACCEPTED, "accepted", 0.0)
    stage_log.add(progress.PROMPT_BUILT, "prompt", 0.1)
    batches = stage_log.batches(0)

    first = await anext(batches)
    waiting = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0.01)
    stage_log.add(progress.GENERATING, "generating", 0.2)
    stage_log.add(progress.COMPLETED, "done", 1.0)
    second = await asyncio.wait_for(waiting, 5)

    assert [e.sequence for e in first] == [1, 2]
    assert [e.sequence for e in second] == [3, 4]
    assert [batch async for batch in batches] == []  # ended with the terminal event


async def test_ended_logs_are_dropped_in_the_order_they_ended_and_running_ones_kept() -> None:
    book = ProgressBook(retention=0.2)
    running, first, second = (book.open(("ex", name, 1)) for name in ("run", "one", "two"))
    running.add(progress.GENERATING, "working", 0.5)
    first.add(progress.COMPLETED, "done", 1.0)
    await asyncio.sleep(0.3)
    second.add(progress.FAILED, "failed", 1.0)

    book.sweep()
    assert book.get(("ex", "one", 1)) is None
    assert book.get(("ex", "two", 1)) is second and book.get(("ex", "run", 1)) is running

    await asyncio.sleep(0.3)
    book.sweep()
    assert len(book) == 1 and book.get(("ex", "run", 1)) is running
    assert book.open(("ex", "run", 1)) is running  # opening again finds the same log
