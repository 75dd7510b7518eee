"""How a stage is retried: one `RetryPolicy`, with its defaults, for KAM (which checks and
stores it in each master template's stages) and the orchestrator (which applies it after a
failed or below-quality attempt).

On the wire it is `bitware.kam.v1.RetryPolicy`, whose zeros mean "the default" for the
multiplier and the longest wait; `from_proto` keeps a message's values as they are (KAM
reports a 0 attempts policy as a field violation), `resolved` fills those defaults in.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bitware.kam.v1 import templates_pb2
from bitware_core.convert import duration, seconds

#: Error classes (`bitware.worker.v1.ErrorClass` without its prefix) a stage without a policy
#: never retries.
DEFAULT_NON_RETRYABLE = ("INVALID_INPUT", "BUDGET", "PERMISSION", "REFUSED", "TOO_LARGE")


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts in all (the first included), and the wait between them: `initial_backoff_s`
    growing by `backoff_multiplier` per attempt up to `max_backoff_s`, with jitter. The
    defaults are those of a stage defined without a policy."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    backoff_multiplier: float = 2.0
    non_retryable_errors: tuple[str, ...] = DEFAULT_NON_RETRYABLE

    def resolved(self) -> RetryPolicy:
        """The policy as it applies: a 0 multiplier or longest wait means the default one, and
        there is always one attempt."""
        return replace(
            self,
            max_attempts=self.max_attempts or 1,
            max_backoff_s=self.max_backoff_s or RetryPolicy.max_backoff_s,
            backoff_multiplier=self.backoff_multiplier or RetryPolicy.backoff_multiplier,
        )

    def backoff(self, attempt: int, hint: float = 0.0) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 for the first): jittered
        over the upper half of the exponential wait, and never shorter than the worker's
        `hint` (its Retry-After)."""
        delay = min(
            self.max_backoff_s,
            self.initial_backoff_s * self.backoff_multiplier ** max(0, attempt - 1),
        )
        delay = random.uniform(delay / 2, delay)  # jitter spreads retries of many stages apart
        return max(delay, hint)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_backoff_s": self.initial_backoff_s,
            "max_backoff_s": self.max_backoff_s,
            "backoff_multiplier": self.backoff_multiplier,
            "non_retryable_errors": list(self.non_retryable_errors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetryPolicy:
        """A stored policy; a key it lacks takes the default."""
        default = cls()
        return cls(
            max_attempts=int(data.get("max_attempts", default.max_attempts)),
            initial_backoff_s=float(data.get("initial_backoff_s", default.initial_backoff_s)),
            max_backoff_s=float(data.get("max_backoff_s", default.max_backoff_s)),
            backoff_multiplier=float(data.get("backoff_multiplier", default.backoff_multiplier)),
            non_retryable_errors=tuple(
                data.get("non_retryable_errors", default.non_retryable_errors)
            ),
        )

    def to_proto(self) -> templates_pb2.RetryPolicy:
        return templates_pb2.RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=duration(self.initial_backoff_s),
            max_backoff=duration(self.max_backoff_s),
            backoff_multiplier=self.backoff_multiplier,
            non_retryable_errors=self.non_retryable_errors,
        )

    @classmethod
    def from_proto(cls, message: templates_pb2.RetryPolicy) -> RetryPolicy:
        """The message's values as they are (see `resolved`)."""
        return cls(
            max_attempts=message.max_attempts,
            initial_backoff_s=seconds(message.initial_backoff),
            max_backoff_s=seconds(message.max_backoff),
            backoff_multiplier=message.backoff_multiplier,
            non_retryable_errors=tuple(message.non_retryable_errors),
        )
