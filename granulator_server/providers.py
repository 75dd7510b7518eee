"""Where structures come from. The offline provider needs no key: it builds a deterministic,
schema-valid structure from the template and topic, and says plainly that it is offline. The
`openai` provider (any OpenAI-compatible endpoint) plugs in behind the same interface."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from granulator_server.domain import StructureTemplate, generate_offline


@dataclass(frozen=True)
class Generation:
    document: dict[str, Any]
    usage: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    async def generate(
        self, template: StructureTemplate, spec: dict[str, Any], feedback: str
    ) -> Generation: ...


class OfflineProvider:
    """Deterministic generation without a model; usage names it `offline` and costs nothing."""

    name = "offline"

    async def generate(
        self, template: StructureTemplate, spec: dict[str, Any], feedback: str
    ) -> Generation:
        started = time.monotonic()
        document = generate_offline(
            template,
            spec["topic"],
            spec.get("audience", ""),
            int(spec["granularity"]),
            dict(spec.get("options", {})),
        )
        return Generation(
            document,
            {
                "provider": "offline",
                "model": "offline",
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "llm_calls": 0,
                "worker_time_ms": int((time.monotonic() - started) * 1000),
            },
        )
