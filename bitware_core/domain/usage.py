"""What work used: tokens, model calls, worker time and cost, added up with `+` from the
attempt to the stage, the execution, the request and the client's month.

Cost is whole micro-dollars (`cost_micros`, see `bitware_core.money`): priced once where the
tokens are counted, then only added, so a charge equals the sum of its attempts exactly.
`cost_usd` is derived from it. A usage is stored in JSON columns (orchestrator stages,
attempts, executions and events; KAM requests; granulator jobs) in one shape, `to_json`;
`from_json` also reads the shapes older rows hold (zero counters left out, `cost_usd` without
`cost_micros`, numbers written as strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from bitware.common.v1 import common_pb2
from bitware_core.money import to_micros, to_usd


def _micros(data: Mapping[str, Any]) -> int:
    """`cost_micros`, or `cost_usd` rounded when a writer set only that."""
    micros = data.get("cost_micros")
    if micros:
        return int(micros)
    return to_micros(float(data.get("cost_usd") or 0.0))


@dataclass(frozen=True)
class ProviderUsage:
    """What one model endpoint (a `BITWARE_PROVIDERS` entry) did within a usage."""

    provider: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    cost_micros: int = 0

    @property
    def cost_usd(self) -> float:
        return to_usd(self.cost_micros)

    def __add__(self, other: ProviderUsage) -> ProviderUsage:
        """The same endpoint's work added; the later model wins when it names one."""
        return ProviderUsage(
            provider=self.provider,
            model=other.model or self.model,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            llm_calls=self.llm_calls + other.llm_calls,
            cost_micros=self.cost_micros + other.cost_micros,
        )

    def to_json(self) -> dict[str, Any]:
        # The cost is stored (and sent, `ProviderUsage.cost_usd`) in dollars only.
        return {
            "provider": self.provider,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "llm_calls": self.llm_calls,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProviderUsage:
        return cls(
            provider=str(data.get("provider") or ""),
            model=str(data.get("model") or ""),
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            llm_calls=int(data.get("llm_calls") or 0),
            cost_micros=_micros(data),
        )

    def to_proto(self) -> common_pb2.ProviderUsage:
        return common_pb2.ProviderUsage(
            provider=self.provider,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            llm_calls=self.llm_calls,
        )

    @classmethod
    def from_proto(cls, message: common_pb2.ProviderUsage) -> ProviderUsage:
        return cls(
            provider=message.provider,
            model=message.model,
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            llm_calls=message.llm_calls,
            cost_micros=to_micros(message.cost_usd),
        )


def _by_provider(entries: Iterable[ProviderUsage]) -> tuple[ProviderUsage, ...]:
    """Entries summed by provider, in order of first appearance."""
    merged: dict[str, ProviderUsage] = {}
    for each in entries:
        known = merged.get(each.provider)
        merged[each.provider] = each if known is None else known + each
    return tuple(merged.values())


@dataclass(frozen=True)
class Usage:
    """Tokens, calls, worker time and cost of some work (an attempt, or any sum of them).

    `model` and `provider` name what did the work last; `by_provider` what each named endpoint
    did. A usage with nothing in it is false (`Usage()`), as work that reported none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    worker_time_ms: int = 0
    llm_calls: int = 0
    model: str = ""
    provider: str = ""
    cost_micros: int = 0
    by_provider: tuple[ProviderUsage, ...] = ()

    @property
    def cost_usd(self) -> float:
        return to_usd(self.cost_micros)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __bool__(self) -> bool:
        return self != _NONE

    def __add__(self, other: Usage) -> Usage:
        """Counters and micro-dollars summed; model and provider are the later one's when it
        names them; `by_provider` summed by provider."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            worker_time_ms=self.worker_time_ms + other.worker_time_ms,
            llm_calls=self.llm_calls + other.llm_calls,
            model=other.model or self.model,
            provider=other.provider or self.provider,
            cost_micros=self.cost_micros + other.cost_micros,
            by_provider=_by_provider((*self.by_provider, *other.by_provider)),
        )

    def priced(self, micros: int) -> Usage:
        """This usage with its cost set to `micros`."""
        return replace(self, cost_micros=micros)

    def to_json(self) -> dict[str, Any]:
        """The form the JSON columns store; `{}` for a usage with nothing in it."""
        if not self:
            return {}
        data: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "worker_time_ms": self.worker_time_ms,
            "llm_calls": self.llm_calls,
        }
        if self.model:
            data["model"] = self.model
        if self.provider:
            data["provider"] = self.provider
        if self.by_provider:
            data["by_provider"] = [each.to_json() for each in self.by_provider]
        data["cost_micros"] = self.cost_micros
        data["cost_usd"] = self.cost_usd
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Usage:
        """A usage from any shape a JSON column holds (keys left out are zero or empty)."""
        if not data:
            return _NONE
        return cls(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            worker_time_ms=int(data.get("worker_time_ms") or 0),
            llm_calls=int(data.get("llm_calls") or 0),
            model=str(data.get("model") or ""),
            provider=str(data.get("provider") or ""),
            cost_micros=_micros(data),
            by_provider=tuple(
                ProviderUsage.from_json(each) for each in data.get("by_provider") or ()
            ),
        )

    def to_proto(self) -> common_pb2.Usage:
        return common_pb2.Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            model=self.model,
            provider=self.provider,
            cost_usd=self.cost_usd,
            worker_time_ms=self.worker_time_ms,
            llm_calls=self.llm_calls,
            cost_micros=self.cost_micros,
            by_provider=[each.to_proto() for each in self.by_provider],
        )

    @classmethod
    def from_proto(cls, message: common_pb2.Usage) -> Usage:
        """A sender that set `cost_usd` but left `cost_micros` 0 is read as that rounded."""
        return cls(
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            worker_time_ms=message.worker_time_ms,
            llm_calls=message.llm_calls,
            model=message.model,
            provider=message.provider,
            cost_micros=message.cost_micros or to_micros(message.cost_usd),
            by_provider=tuple(ProviderUsage.from_proto(each) for each in message.by_provider),
        )


_NONE = Usage()
