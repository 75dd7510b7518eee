"""The dashboard's Overview: time series aggregated from the services' own lists, as the caller
sees them (a client user only its own executions and requests; staff every client's, or one).

- Per minute of the window: executions that finished, by outcome; the p50 and p95 of their
  end-to-end time (created → ended); and model calls in flight, counted as the attempts running
  on workers during that minute (a granulator's attempt makes its model calls one at a time).
- Per day of this month: dollars charged (a request's cost, on the day it settled) and the
  running total, against the monthly budget.

The lists are read newest first and only as far back as needed, bounded by MAX_PAGES; `partial`
says when the bound cut them short. The budget line of staff (all active clients together) reads
every page of clients."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2

#: Pages of 200 read from each list at most.
MAX_PAGES = 10
PAGE_SIZE = 200
#: How long before the window an execution may have been created and still end inside it.
LOOKBACK = timedelta(hours=2)

_OUTCOMES = {
    orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED: "succeeded",
    orchestrator_pb2.EXECUTION_STATUS_FAILED: "failed",
    orchestrator_pb2.EXECUTION_STATUS_CANCELLED: "cancelled",
}
_SETTLED = {
    requests_pb2.REQUEST_STATUS_COMPLETED,
    requests_pb2.REQUEST_STATUS_FAILED,
    requests_pb2.REQUEST_STATUS_CANCELLED,
}


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (`share` in 0..1) of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Minute:
    time: datetime
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    durations: list[float] = field(default_factory=list)
    in_flight: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat() + "Z",
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "p50_seconds": percentile(self.durations, 0.5),
            "p95_seconds": percentile(self.durations, 0.95),
            "in_flight": self.in_flight,
        }


def _time(stamp: Any) -> datetime | None:
    return stamp.ToDatetime() if stamp.seconds or stamp.nanos else None


def minutes(
    executions: Iterable[orchestrator_pb2.Execution], start: datetime, count: int, now: datetime
) -> list[Minute]:
    """`count` one-minute buckets from `start` (whole minutes, naive UTC)."""
    buckets = [Minute(start + timedelta(minutes=n)) for n in range(count)]
    end = start + timedelta(minutes=count)

    def index(moment: datetime) -> int:
        return int((moment - start).total_seconds() // 60)

    for execution in executions:
        ended = _time(execution.end_time)
        outcome = _OUTCOMES.get(execution.status)
        if outcome and ended and start <= ended < end:
            bucket = buckets[index(ended)]
            setattr(bucket, outcome, getattr(bucket, outcome) + 1)
            created = _time(execution.create_time)
            if created is not None:
                bucket.durations.append(max(0.0, (ended - created).total_seconds()))
        for attempt in (a for stage in execution.stages for a in stage.attempts):
            began = _time(attempt.start_time)
            if began is None or not attempt.worker_id:
                continue
            # An attempt cut short by its execution's end may have no end of its own.
            finished = _time(attempt.end_time) or ended or now
            first, last = max(0, index(began)), min(count - 1, index(finished))
            for n in range(first, last + 1):
                buckets[n].in_flight += 1
    return buckets


def days(
    requests: Iterable[requests_pb2.ClientRequest], month_start: datetime, today: datetime
) -> list[dict[str, Any]]:
    """Each day of the month so far: dollars charged that day and the running total."""
    count = (today.date() - month_start.date()).days + 1
    spent = [0.0] * count
    for request in requests:
        settled = _time(request.update_time)
        if request.status in _SETTLED and settled is not None and settled >= month_start:
            spent[min(count - 1, (settled.date() - month_start.date()).days)] += request.cost_usd
    total = 0.0
    out = []
    for n, amount in enumerate(spent):
        total += amount
        day = (month_start + timedelta(days=n)).date().isoformat()
        out.append({"date": day, "spent_usd": round(amount, 6), "total_usd": round(total, 6)})
    return out


def running_now(executions: Iterable[orchestrator_pb2.Execution]) -> int:
    """Attempts on a worker at this moment: started, not ended, in an execution still going."""
    return sum(
        1
        for execution in executions
        if execution.status not in _OUTCOMES
        for stage in execution.stages
        for attempt in stage.attempts
        if attempt.worker_id and _time(attempt.start_time) and not _time(attempt.end_time)
    )


def summary(buckets: list[Minute], in_flight_now: int) -> dict[str, Any]:
    """The whole window at once: executions by outcome and p50/p95 over all of them."""
    durations = [d for bucket in buckets for d in bucket.durations]
    return {
        "in_flight_now": in_flight_now,
        "succeeded": sum(b.succeeded for b in buckets),
        "failed": sum(b.failed for b in buckets),
        "cancelled": sum(b.cancelled for b in buckets),
        "p50_seconds": percentile(durations, 0.5),
        "p95_seconds": percentile(durations, 0.95),
    }
