"""Money as integer micro-dollars, and usage added up.

A cost is priced once, where the tokens are counted (the worker), and rounded there to whole
micro-dollars (`Usage.cost_micros`). Everything after that adds integers: the stage, the
execution, the request and the client's month, so that what a client is charged equals the sum
of its attempts' costs exactly. `cost_usd` is kept beside it for people and old callers; it is
always `cost_micros / 1,000,000`, and a float of that form turns back into the same integer
(`to_micros`) for any amount below about nine billion dollars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MICROS_PER_USD = 1_000_000
#: The integer counters of a usage, summed field by field.
_COUNTS = ("prompt_tokens", "completion_tokens", "worker_time_ms", "llm_calls")


def to_micros(usd: float) -> int:
    """US dollars as whole micro-dollars (rounded to the nearest)."""
    return round(float(usd) * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def micros_of(usage: Mapping[str, Any]) -> int:
    """A usage's cost in micro-dollars: `cost_micros`, or `cost_usd` rounded when a sender
    set only that."""
    micros = usage.get("cost_micros")
    if micros:
        return int(micros)
    return to_micros(float(usage.get("cost_usd") or 0.0))


def priced(usage: Mapping[str, Any], micros: int) -> dict[str, Any]:
    """`usage` with its cost set to `micros` (and the matching `cost_usd`)."""
    return {**usage, "cost_micros": micros, "cost_usd": to_usd(micros)}


def add_usage(total: Mapping[str, Any], usage: Mapping[str, Any]) -> dict[str, Any]:
    """Two usages added: counters and micro-dollars summed; model and provider are the later
    one's when it names them."""
    merged = {key: int(total.get(key, 0)) + int(usage.get(key, 0)) for key in _COUNTS}
    for key in ("model", "provider"):
        value = usage.get(key) or total.get(key)
        if value:
            merged[key] = value
    return priced(merged, micros_of(total) + micros_of(usage))
