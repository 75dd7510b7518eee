"""Group commit (`bitware_core.batching.TxBatcher`): work that arrives while a transaction
is under way shares the next one, and each piece still behaves as if it ran alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bitware_core.batching import TxBatcher
from bitware_core.db import Database
from bitware_core.sql import Tx


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'batch.db'}")
    database.run_tx_sync(lambda tx: tx.execute("CREATE TABLE t (k TEXT, n INTEGER)"))
    yield database
    database.close()


def insert(key: str, n: int) -> Callable[[Tx], int]:
    def work(tx: Tx) -> int:
        tx.execute("INSERT INTO t (k, n) VALUES (:k, :n)", {"k": key, "n": n})
        return n

    return work


def rows(db: Database) -> list[tuple[str, int]]:
    return db.run_tx_sync(
        lambda tx: [(str(k), int(n)) for k, n in tx.all("SELECT k, n FROM t ORDER BY rowid")]
    )


async def test_alone_when_idle_together_under_load(db: Database) -> None:
    batcher = TxBatcher(db)
    assert await batcher.run("a", insert("a", 1)) == 1
    assert (batcher.transactions, batcher.pieces) == (1, 1)
    # Ten pieces that arrive together share one transaction.
    results = await asyncio.gather(
        *(batcher.run(f"e{i % 3}", insert(f"e{i % 3}", i)) for i in range(10))
    )
    assert results == list(range(10))
    assert (batcher.transactions, batcher.pieces) == (2, 11)
    written = rows(db)
    assert sorted(n for _, n in written) == [0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [k for k, _ in written[1:]] == sorted(k for k, _ in written[1:])
    # One key's pieces keep their order; keys are written in key order (lock order).
    for key in ("e0", "e1", "e2"):
        ns = [n for k, n in written if k == key]
        assert ns == sorted(ns)
    await batcher.stop()


class Refused(Exception):
    pass


async def test_a_failing_piece_undoes_nothing_of_the_others(db: Database) -> None:
    batcher = TxBatcher(db)

    def fails(tx: Tx) -> int:
        tx.execute("INSERT INTO t (k, n) VALUES ('bad', 0)")
        raise Refused("stale")

    first = asyncio.ensure_future(batcher.run("a", insert("a", 1)))
    await asyncio.sleep(0)  # the first is under way; the next three queue up behind it
    together = [
        asyncio.ensure_future(batcher.run("b", insert("b", 2))),
        asyncio.ensure_future(batcher.run("c", fails)),
        asyncio.ensure_future(batcher.run("d", insert("d", 3))),
    ]
    assert await first == 1
    done = await asyncio.gather(*together, return_exceptions=True)
    assert done[0] == 2 and isinstance(done[1], Refused) and done[2] == 3
    # The failed piece wrote nothing; the others wrote once each.
    assert sorted(rows(db)) == [("a", 1), ("b", 2), ("d", 3)]
    await batcher.stop()


async def test_a_cancelled_caller_s_work_is_skipped_when_not_started(db: Database) -> None:
    batcher = TxBatcher(db)
    first = asyncio.ensure_future(batcher.run("a", insert("a", 1)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.run("b", insert("b", 2)))
    await asyncio.sleep(0)
    second.cancel()
    assert await first == 1
    await asyncio.gather(second, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert rows(db) == [("a", 1)]
    await batcher.stop()


async def test_work_queued_as_the_writer_ends_is_written(db: Database) -> None:
    """A piece that arrives just as the writer's loop ended (its task not yet marked done)
    still gets a writer: the regression hung executions under load."""
    batcher = TxBatcher(db)

    async def one_after_another() -> None:
        for i in range(20):
            # This resumes in the loop step in which the writer's loop ends, before its task's
            # done callbacks run; the next piece is queued right then.
            assert await batcher.run("a", insert("a", i)) == i
            assert await batcher.run("b", insert("b", i)) == i

    await asyncio.wait_for(one_after_another(), 10)
    await batcher.stop()
