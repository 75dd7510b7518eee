"""Money as integer micro-dollars, and usage added up.

A cost is priced once, where the tokens are counted (the worker), and rounded there to whole
micro-dollars (`Usage.cost_micros`). Everything after that adds integers: the stage, the
execution, the request and the client's month, so that what a client is charged equals the sum
of its attempts' costs exactly. `cost_usd` is kept beside it for people and old callers; it is
always `cost_micros / 1,000,000`, and a float of that form turns back into the same integer
(`to_micros`) for any amount below about nine billion dollars.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MICROS_PER_USD = 1_000_000
#: The integer counters of a usage, summed field by field.
_COUNTS = ("prompt_tokens", "completion_tokens", "worker_time_ms", "llm_calls")
#: The integer counters of one provider's entry in `by_provider`.
_PROVIDER_COUNTS = ("prompt_tokens", "completion_tokens", "llm_calls")


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
    one's when it names them; what each provider did (`by_provider`) summed by provider."""
    merged: dict[str, Any] = {
        key: int(total.get(key, 0)) + int(usage.get(key, 0)) for key in _COUNTS
    }
    for key in ("model", "provider"):
        value = usage.get(key) or total.get(key)
        if value:
            merged[key] = value
    by_provider = _add_by_provider(total.get("by_provider") or (), usage.get("by_provider") or ())
    if by_provider:
        merged["by_provider"] = by_provider
    return priced(merged, micros_of(total) + micros_of(usage))


def _add_by_provider(
    first: Iterable[Mapping[str, Any]], second: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Two `by_provider` lists as one, summed by provider (in order of first appearance)."""
    merged: dict[str, dict[str, Any]] = {}
    for each in (*first, *second):
        name = str(each.get("provider", ""))
        known = merged.get(name)
        if known is None:
            merged[name] = dict(each)
            continue
        for key in _PROVIDER_COUNTS:
            known[key] = int(known.get(key, 0)) + int(each.get(key, 0))
        known["cost_usd"] = to_usd(micros_of(known) + micros_of(each))
        known.pop("cost_micros", None)
        if each.get("model"):
            known["model"] = each["model"]
    return list(merged.values())
