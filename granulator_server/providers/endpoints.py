"""The OpenAI-compatible endpoints one `openai` provider calls, and what it knows of each.

`BITWARE_PROVIDERS` lists several, in order of preference, as JSON::

    [{"name": "groq", "base_url": "https://api.groq.com/openai/v1", "model": "llama-3.1-8b-instant",
      "api_key_env": "GROQ_API_KEY", "input_price": 0.05, "output_price": 0.08},
     {"name": "local", "base_url": "http://127.0.0.1:8000/v1", "model": "smollm2",
      "structured": "json_object_schema", "extra_body": {"repeat_penalty": 1.1}}]

`name`, `base_url` and `model` are required; the key is read from the environment variable
`api_key_env` names (a key is never written in the list itself, so it never reaches a log);
prices are US dollars per million tokens (else the price table's, by model); `structured`,
`max_output_tokens`, `frequency_penalty` and `extra_body` override the `BITWARE_OPENAI_*`
defaults for that endpoint. Without `BITWARE_PROVIDERS`, the `BITWARE_OPENAI_*` settings make
one endpoint named `openai`.

Each endpoint's `Health` says when it may be called: after `failures` transient failures in a
row (429, 5xx, timeouts) it cools down for `cooldown` seconds, during which the provider uses the
next endpoint; the rate-limit headers it sends (`retry-after`, `x-ratelimit-remaining-*`,
`x-ratelimit-reset-*`) hold its calls back until it has room again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bitware_core.config import json_setting
from granulator_server.pricing import Price
from granulator_server.providers import formats
from granulator_server.providers.replies import retry_after

PROVIDERS_ENV = "BITWARE_PROVIDERS"
_KNOWN = {
    "name",
    "base_url",
    "model",
    "api_key_env",
    "input_price",
    "output_price",
    "structured",
    "max_output_tokens",
    "frequency_penalty",
    "extra_body",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint as configured (see the module docstring)."""

    name: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    #: Set when the configuration prices this endpoint; else the price table's.
    price: Price | None = None
    structured: str = formats.AUTO
    max_output_tokens: int = 4096
    frequency_penalty: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)


def parse_providers(
    raw: str, environ: Mapping[str, str], defaults: EndpointConfig
) -> list[EndpointConfig]:
    """The endpoints `BITWARE_PROVIDERS` lists; fields it leaves out come from `defaults`.
    Raises ValueError naming the entry and field that is wrong."""
    must_be = "a non-empty JSON list of endpoints"
    entries = json_setting(PROVIDERS_ENV, raw, list, must_be, empty=False)
    endpoints: list[EndpointConfig] = []
    for index, entry in enumerate(entries):
        where = f"{PROVIDERS_ENV}[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        if "api_key" in entry:
            raise ValueError(f"{where}: name the variable that holds the key (api_key_env)")
        unknown = sorted(set(entry) - _KNOWN)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for name in ("name", "base_url", "model"):
            if not isinstance(entry.get(name), str) or not entry[name].strip():
                raise ValueError(f"{where}.{name} is required (a string)")
        key_env = entry.get("api_key_env", "")
        if key_env and key_env not in environ:
            raise ValueError(f"{where}.api_key_env: the variable {key_env} is not set")
        try:
            endpoints.append(
                EndpointConfig(
                    name=entry["name"],
                    base_url=entry["base_url"],
                    model=entry["model"],
                    api_key=environ.get(key_env, "") if key_env else "",
                    price=_price(entry),
                    structured=formats.check(entry.get("structured", defaults.structured)),
                    max_output_tokens=int(
                        entry.get("max_output_tokens", defaults.max_output_tokens)
                    ),
                    frequency_penalty=float(
                        entry.get("frequency_penalty", defaults.frequency_penalty)
                    ),
                    extra_body=dict(entry.get("extra_body", defaults.extra_body)),
                )
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
    names = [endpoint.name for endpoint in endpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"{PROVIDERS_ENV}: endpoint names must be distinct")
    return endpoints


def _price(entry: dict[str, Any]) -> Price | None:
    given = [name for name in ("input_price", "output_price") if name in entry]
    if not given:
        return None
    if len(given) == 1:
        raise ValueError("give both input_price and output_price, or neither")
    return Price(float(entry["input_price"]), float(entry["output_price"]))


def duration(text: str) -> float | None:
    """Seconds in a rate-limit reset value: `20ms`, `1s`, `6m0s`, `1h2m3.5s`, or a number."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


class Health:
    """When one endpoint may be called: its cool-down after repeated failures, and the room
    its rate-limit headers say it has. Times are `time.monotonic()` seconds."""

    def __init__(self) -> None:
        self.failures = 0
        self.cooling_until = 0.0
        self._retry_at = 0.0
        self._requests: tuple[int, float] | None = None  # (left, reset at)
        self._tokens: tuple[int, float] | None = None
        self._lock = threading.Lock()

    def cooling(self, now: float) -> bool:
        return now < self.cooling_until

    def failed(self, now: float, threshold: int, cooldown: float) -> bool:
        """One more transient failure; True when it starts the endpoint's cool-down."""
        with self._lock:
            self.failures += 1
            if self.failures < threshold:
                return False
            self.failures, self.cooling_until = 0, now + cooldown
            return True

    def succeeded(self) -> None:
        self.failures = 0

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """Reads what a reply's headers say about the room left."""
        lowered = {k.lower(): v for k, v in headers.items()}
        wait = retry_after(lowered)
        with self._lock:
            if wait is not None:
                self._retry_at = max(self._retry_at, now + wait)
            for kind in ("requests", "tokens"):
                left = lowered.get(f"x-ratelimit-remaining-{kind}", "")
                reset = duration(lowered.get(f"x-ratelimit-reset-{kind}", ""))
                if left.strip().isdigit() and reset is not None:
                    setattr(self, f"_{kind}", (int(left), now + reset))

    def wait(self, tokens: int, now: float) -> float:
        """Seconds to hold back a call that may use `tokens` (prompt and `max_tokens`, as
        rate limiters count them)."""
        with self._lock:
            until = self._retry_at
            if self._requests is not None and self._requests[0] < 1:
                until = max(until, self._requests[1])
            if self._tokens is not None and self._tokens[0] < tokens:
                until = max(until, self._tokens[1])
            return max(0.0, until - now)

    def spend(self, tokens: int, now: float) -> None:
        """A call is going out: it uses room the last headers reported (so that concurrent
        calls do not all count on the same room). Room past its reset time is forgotten."""
        with self._lock:
            if self._requests is not None:
                left, reset = self._requests
                self._requests = (left - 1, reset) if reset > now else None
            if self._tokens is not None:
                left, reset = self._tokens
                self._tokens = (left - tokens, reset) if reset > now else None
