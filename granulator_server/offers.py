"""A granulator's slots, free of gRPC: the offers it accepted, each reserved until `Process`
starts it and then running until it ends, once per (execution, stage, attempt). The worker
protocol's handlers (`worker`) only translate to and from these.

Slots (`max_jobs`) bound the attempts held at once, not the work done at once: an attempt spends
most of its time waiting on the model, so a granulator holds as many as its provider takes calls
(`capacity`); the CPU-bound part of each has its own, small bound (`stages.StageRunner.cpu`).

A reservation lasts `reservation_seconds`; when `Process` has not started by then the slot is
freed and the attempt's log ends as cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bitware_core.db import Database
from bitware_core.domain import StageOutcome, Usage
from granulator_server import jobs, progress, stages, template_store
from granulator_server.domain import StructureTemplate
from granulator_server.errors import NoReservation, StageCancelled
from granulator_server.providers import Provider

#: (execution id, stage id, attempt): one piece of work at the workers.
Key = tuple[str, str, int]
RESERVATION_SECONDS = 30.0
BUSY_RETRY_SECONDS = 1.0
#: Slots of a granulator on the offline provider, whose work is all CPU.
OFFLINE_SLOTS = 4
#: The most slots the orchestrator's registry takes from one worker.
MOST_SLOTS = 1000


def capacity(max_concurrent_jobs: int, max_model_calls: int, provider: Provider) -> int:
    """Attempts a granulator holds at once: as configured, else as many as the provider takes
    model calls at once (the offline provider: a few, as its work is all CPU), up to the
    orchestrator's most. Raises ValueError for a configured number the orchestrator refuses."""
    if max_concurrent_jobs == 0:
        return OFFLINE_SLOTS if provider.name == "offline" else min(max_model_calls, MOST_SLOTS)
    if not 1 <= max_concurrent_jobs <= MOST_SLOTS:
        raise ValueError(
            f"BITWARE_MAX_CONCURRENT_JOBS must be from 1 to 1000 (or 0), got {max_concurrent_jobs}"
        )
    return max_concurrent_jobs


@dataclass
class Offer:
    """An accepted offer: reserved until Process starts it, then running until it ends."""

    work: stages.Work
    epoch: int
    #: The Handshake found no job for the attempt, so `Process` need not look for one.
    job_known_new: bool = False
    expiry: asyncio.TimerHandle | None = None
    task: asyncio.Task[StageOutcome] | None = None


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: whether the attempt was held here, and what it used (None when it
    was only reserved, so it used nothing; else what its job recorded, empty without a job)."""

    held: bool
    usage: Usage | None = None


class Slots:
    def __init__(
        self,
        db: Database,
        runner: stages.StageRunner,
        book: progress.ProgressBook,
        max_jobs: int,
    ) -> None:
        self.db, self.runner, self.book, self.max_jobs = db, runner, book, max_jobs
        self.offers: dict[Key, Offer] = {}
        self.reservation_seconds = RESERVATION_SECONDS
        #: Set when the server stops: every new offer is declined as DRAINING.
        self.draining = False

    @property
    def active(self) -> int:
        """Slots in use: running attempts and live reservations."""
        return len(self.offers)

    async def offer(self, offered: stages.Offered) -> stages.Work | stages.Decline:
        """Takes the offered attempt (`stages.check_offer`) and reserves a slot for it, or says
        why not. An attempt already held here keeps its slot (with the newer epoch), and one
        whose job has finished is answered from it by `Process` without a slot; any other
        needs a free one (AT_CAPACITY, retry after a second)."""
        work = await stages.check_offer(offered, self._resolve, draining=self.draining)
        if isinstance(work, stages.Decline):
            return work
        key = (offered.execution_id, offered.stage_id, offered.attempt)
        offer = self.offers.get(key)
        finished: bool | None = False
        if offer is not None:
            offer.epoch = max(offer.epoch, offered.epoch)
        elif not (finished := await self._finished(key, offered.epoch)):
            if self.active >= self.max_jobs:
                return stages.Decline(
                    stages.DeclineReason.AT_CAPACITY,
                    f"all {self.max_jobs} slots are busy",
                    retry_after=BUSY_RETRY_SECONDS,
                )
            offer = self.offers[key] = Offer(work, offered.epoch, job_known_new=finished is None)
            offer.expiry = asyncio.get_running_loop().call_later(
                self.reservation_seconds, self._expire, key, offer
            )
            self.book.open(key).add(progress.ACCEPTED, "offer accepted", 0.0)
        return work

    async def _resolve(self, query: str) -> StructureTemplate | None:
        """The template for `query`, current even when another granulator sharing the database
        has just changed it (one small query while this process's copy is current)."""
        engine = self.db.engine
        found = await self.db.run_tx(lambda tx: template_store.resolve_tx(tx, engine, query))
        return found[0] if found else None

    async def _finished(self, key: Key, epoch: int) -> bool | None:
        """Whether the attempt's job has finished; None when there is no job for it at all.
        Epoch 1 is a stage's first claim ever, so no worker can have a job for it yet: no
        lookup (the common case, and a database round trip off every dispatch)."""
        if epoch == 1:
            return None
        stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
        if stored is None:
            return None
        return bool(stored.result)

    def _expire(self, key: Key, offer: Offer) -> None:
        if self.offers.get(key) is offer and offer.task is None:
            del self.offers[key]
            self.book.open(key).add(
                progress.CANCELLED, "reservation expired: Process did not follow in time", 1.0
            )

    async def process(self, key: Key, epoch: int) -> StageOutcome:
        """The attempt's outcome (see `stages`): a finished attempt's from its job, else the
        reserved attempt run once (shielded: a dropped call does not stop the work, a repeated
        call joins it). NoReservation for an attempt not reserved here or an older epoch,
        StageCancelled for one that was cancelled."""
        _, stage_id, attempt = key
        offer = self.offers.get(key)
        # An accepted offer that is still here has not finished (its task removes it when it
        # ends, and the Handshake that made it found no finished job): no lookup needed.
        if offer is None or epoch < offer.epoch:
            stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
            if stored is not None and stored.result:
                outcome = StageOutcome.from_json(stored.result)
                if outcome.cancelled:
                    raise StageCancelled(stage_id, attempt)
                return outcome
            offer = self.offers.get(key)
        if offer is None or epoch < offer.epoch:
            raise NoReservation(stage_id, attempt, epoch)
        if offer.task is None:
            if offer.expiry is not None:
                offer.expiry.cancel()
            offer.task = asyncio.create_task(self._run(key, offer))
        task = offer.task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise StageCancelled(stage_id, attempt) from None
            raise

    async def _run(self, key: Key, offer: Offer) -> StageOutcome:
        try:
            return await self.runner.run(
                offer.work, self.book.open(key), job_known_new=offer.job_known_new
            )
        finally:
            if self.offers.get(key) is offer:
                del self.offers[key]

    async def cancel(self, key: Key, reason: str) -> Cancelled:
        """Frees a reserved slot, or stops a running attempt and waits for it to end."""
        offer = self.offers.get(key)
        if offer is not None and offer.task is None:
            del self.offers[key]
            if offer.expiry is not None:
                offer.expiry.cancel()
            self.book.open(key).add(
                progress.CANCELLED, reason or "cancelled before it started", 1.0
            )
            return Cancelled(held=True)
        if offer is not None and offer.task is not None:
            offer.task.cancel()
            await asyncio.gather(offer.task, return_exceptions=True)
        # The attempt's job holds what it consumed: up to the cancel, or in full when it had
        # finished already (the caller still owes it).
        stored = await self.db.run_tx(lambda tx: jobs.find(tx, *key))
        usage = Usage.from_json(stored.usage if stored is not None else None)
        return Cancelled(held=offer is not None, usage=usage)
