"""The subscription tiers and the limits each enforces (users, requests a month, executions at
once, highest priority). Which master templates a tier may run is part of each template."""

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
    #: Executions running at once.
    max_concurrent_executions: int
    #: The highest priority a request may ask for.
    max_priority: str

    def allows_priority(self, priority: str) -> bool:
        return PRIORITIES.index(priority) <= PRIORITIES.index(self.max_priority)


TIER_LIMITS = {
    "basic": TierLimits(2, 50, 1, "normal"),
    "standard": TierLimits(10, 500, 3, "high"),
    "premium": TierLimits(50, 5_000, 10, "high"),
    "enterprise": TierLimits(1_000, 100_000, 50, "critical"),
}
