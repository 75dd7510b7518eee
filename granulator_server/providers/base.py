"""The provider interface, shared by the offline and the `openai` provider, the meter that
counts what every model call of one stage consumed, the record of each call, and the
Prometheus series of the process's model calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bitware_core import money
from bitware_core.domain import ProviderUsage, Usage
from granulator_server.domain import StructureTemplate
from granulator_server.pricing import Price, PriceTable

#: Called with the number of elements produced so far while a reply streams in.
ProgressCallback = Callable[[int], None]


@dataclass
class CallRecord:
    """One HTTP call to a model: what was asked, what came back, how long it took and why it
    was made. The `openai` provider writes one per call, in one place (`OpenAIProvider._send`),
    to the stage's `UsageMeter.calls`. `request` is the JSON body sent (never the API key,
    which travels in a header)."""

    endpoint: str
    model: str
    #: Structured-output mode (see `providers.formats`).
    mode: str
    #: Why the call was made: `first`, or the problem with the previous reply that made us ask
    #: again (`INVALID_JSON`, `SCHEMA_VIOLATION`, `TRUNCATED`, `RATE_LIMITED`, `FORMAT_REJECTED`…).
    why: str
    request: dict[str, Any]
    #: Seconds since the epoch when the call was sent.
    started_at: float
    latency_s: float = 0.0
    content: str = ""
    finish_reason: str = ""
    #: Empty on success; else what failed, e.g. `500: …` or `no reply in 60s`.
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: True when the server sent no usage and the tokens were estimated from the text.
    estimated: bool = False


class ModelMetrics:
    """Model calls of one granulator process, by model: in flight now, their durations by
    outcome, tokens by type (`input`, `output`; estimated ones too) and cost in USD. The `openai`
    provider counts every call in `OpenAIProvider._send`."""

    #: Model calls take seconds to minutes.
    BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_flight = Gauge(
            "bitware_model_calls_in_flight",
            "Model calls waiting for their reply now, by model.",
            ("model",),
            registry=registry,
        )
        self.seconds = Histogram(
            "bitware_model_call_seconds",
            "Time of one model call, by model and outcome (ok, error, cancelled).",
            ("model", "outcome"),
            buckets=self.BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "bitware_model_tokens",
            "Tokens of model calls, by model and type (input, output).",
            ("model", "type"),
            registry=registry,
        )
        self.cost = Counter(
            "bitware_model_cost_usd",
            "Cost of model calls in USD at the configured prices, by model.",
            ("model",),
            registry=registry,
        )

    def used(self, call: CallRecord, cost_usd: float) -> None:
        """What a call consumed, once its tokens are known."""
        self.tokens.labels(call.model, "input").inc(call.prompt_tokens)
        self.tokens.labels(call.model, "output").inc(call.completion_tokens)
        self.cost.labels(call.model).inc(cost_usd)


@dataclass(frozen=True)
class Generation:
    """A structure produced by a provider and what it cost."""

    document: dict[str, Any]
    usage: Usage = field(default_factory=Usage)
    #: Every model call made for it (none for the offline provider).
    calls: tuple[CallRecord, ...] = ()
    #: The provider checked `document` against the template's JSON Schema and found no problem.
    schema_checked: bool = False


@dataclass(frozen=True)
class Judgement:
    """An LLM judge's verdict on a structure: a 0-100 score, per-criterion scores (0-1) and
    text that tells a generator what to fix."""

    score: float
    criteria: dict[str, float]
    feedback: str
    usage: Usage


class Provider(Protocol):
    """Where structures come from. `generate` raises `errors.StageFailure` subclasses."""

    name: str
    model: str

    @property
    def prices(self) -> PriceTable | None:
        """What its model's tokens cost, or None when it calls no priced model."""
        ...

    async def generate(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        feedback: str,
        on_progress: ProgressCallback | None = None,
    ) -> Generation: ...

    async def judge(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        document: dict[str, Any],
        level: int,
    ) -> Judgement | None:
        """A model's verdict, or None when this provider has no model to judge with."""
        ...

    async def close(self) -> None:
        """Lets go of its connections (when the granulator stops)."""
        ...


#: The meters made while one stage attempt runs (see `track_meters`).
_METERS: ContextVar[list[UsageMeter] | None] = ContextVar("bitware_usage_meters", default=None)


def track_meters() -> list[UsageMeter]:
    """From now on in this context (one stage attempt's task), every new `UsageMeter` is also
    put in the returned list, so that an attempt stopped midway can still say what its model
    calls consumed so far (`usage_of`)."""
    meters: list[UsageMeter] = []
    _METERS.set(meters)
    return meters


def usage_of(meters: list[UsageMeter]) -> Usage:
    """What the tracked meters counted, together."""
    return sum((meter.usage() for meter in meters), Usage())


@dataclass
class _Served:
    """What one endpoint did for a stage."""

    provider: str
    model: str
    price: Price | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0

    def usage(self, prices: PriceTable | None) -> ProviderUsage:
        tokens = self.prompt_tokens, self.completion_tokens
        if self.price is not None:
            cost = self.price.cost(*tokens)
        else:
            cost = prices.cost(self.model, *tokens) if prices is not None else 0.0
        return ProviderUsage(
            provider=self.provider,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            llm_calls=self.llm_calls,
            cost_micros=money.to_micros(cost),
        )


@dataclass
class UsageMeter:
    """Tokens, calls and time of one stage, summed over every call (retries and re-asks too).

    Calls that name the endpoint serving them (`call(provider, model, price)`) are also
    counted per endpoint: the usage then names the endpoint of the last call and lists each
    one under `by_provider`, each priced at its own price."""

    provider: str
    model: str
    prices: PriceTable | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    started: float = field(default_factory=time.monotonic)
    #: Every model call of the stage, in order.
    calls: list[CallRecord] = field(default_factory=list)
    _served: dict[str, _Served] = field(default_factory=dict)
    _last: _Served | None = None

    def __post_init__(self) -> None:
        tracked = _METERS.get()
        if tracked is not None:
            tracked.append(self)

    def call(self, provider: str = "", model: str = "", price: Price | None = None) -> None:
        self.llm_calls += 1
        if provider:
            self._last = self._served.setdefault(provider, _Served(provider, model, price))
            self._last.llm_calls += 1

    def add_tokens(self, prompt: int, completion: int) -> None:
        """Tokens of the call counted last."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if self._last is not None:
            self._last.prompt_tokens += prompt
            self._last.completion_tokens += completion

    def cost_of(self, call: CallRecord) -> float:
        """One call's cost in USD: at its endpoint's own price, else from the price table."""
        tokens = call.prompt_tokens, call.completion_tokens
        served = self._served.get(call.endpoint)
        if served is not None and served.price is not None:
            return served.price.cost(*tokens)
        return self.prices.cost(call.model, *tokens) if self.prices is not None else 0.0

    def usage(self) -> Usage:
        """What the stage used so far, priced."""
        usage = Usage(
            provider=self.provider,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            llm_calls=self.llm_calls,
            worker_time_ms=int((time.monotonic() - self.started) * 1000),
        )
        if self._last is None:
            cost = (
                self.prices.cost(self.model, self.prompt_tokens, self.completion_tokens)
                if self.prices is not None
                else 0.0
            )
            return usage.priced(money.to_micros(cost))
        served = tuple(each.usage(self.prices) for each in self._served.values())
        return replace(
            usage,
            provider=self._last.provider,
            model=self._last.model,
            by_provider=served,
            cost_micros=sum(each.cost_micros for each in served),
        )
