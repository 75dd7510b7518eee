"""Money as integer micro-dollars (a usage adds them up: `bitware_core.domain.Usage`).

A cost is priced once, where the tokens are counted (the worker), and rounded there to whole
micro-dollars (`Usage.cost_micros`). Everything after that adds integers: the stage, the
execution, the request and the client's month, so that what a client is charged equals the sum
of its attempts' costs exactly. `cost_usd` is kept beside it for people and old callers; it is
always `cost_micros / 1,000,000`, and a float of that form turns back into the same integer
(`to_micros`) for any amount below about nine billion dollars.
"""

from __future__ import annotations

MICROS_PER_USD = 1_000_000


def to_micros(usd: float) -> int:
    """US dollars as whole micro-dollars (rounded to the nearest)."""
    return round(float(usd) * MICROS_PER_USD)


def to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD
