"""The offline provider: deterministic generation without a model. Its usage names it `offline`
(provider and model) and costs nothing, so nobody mistakes its output for a model's."""

from __future__ import annotations

from typing import Any

from granulator_server.domain import StructureTemplate, generate_offline
from granulator_server.providers.base import Generation, Judgement, ProgressCallback, UsageMeter


class OfflineProvider:
    name = "offline"
    model = "offline"
    #: It calls no model: its usage costs nothing.
    prices = None

    async def generate(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        feedback: str,
        on_progress: ProgressCallback | None = None,
    ) -> Generation:
        meter = UsageMeter(self.name, self.model)
        document = generate_offline(
            template,
            spec["topic"],
            spec.get("audience", ""),
            int(spec["granularity"]),
            dict(spec.get("options", {})),
        )
        return Generation(document, meter.usage())

    async def judge(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        document: dict[str, Any],
        level: int,
    ) -> Judgement | None:
        return None  # no model, no judge: the rules alone score the structure

    async def close(self) -> None:
        pass  # nothing held open
