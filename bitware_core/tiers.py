"""The subscription tiers and the limits each enforces (users, requests a month, executions at
once, highest priority, request rate). Which master templates a tier may run is part of each
template."""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("basic", "standard", "premium", "enterprise")
PRIORITIES = ("low", "normal", "high", "critical")


@dataclass(frozen=True)
class TierLimits:
    #: Users (of role client) per client.
    max_users: int
    #: Requests created per UTC calendar month.
    max_requests_per_month: int
    #: Executions running at once; more wait in the queue for the client's turn.
    max_concurrent_executions: int
    #: The highest priority a request may ask for.
    max_priority: str
    #: Calls per second that create, execute or retry requests, sustained (a token bucket).
    requests_per_second: float
    #: How many such calls may come at once (the bucket's size).
    request_burst: int

    def allows_priority(self, priority: str) -> bool:
        return PRIORITIES.index(priority) <= PRIORITIES.index(self.max_priority)


TIER_LIMITS = {
    "basic": TierLimits(2, 50, 1, "normal", 1.0, 10),
    "standard": TierLimits(10, 500, 3, "high", 5.0, 30),
    "premium": TierLimits(50, 5_000, 10, "high", 20.0, 100),
    "enterprise": TierLimits(1_000, 100_000, 50, "critical", 200.0, 1_000),
}
