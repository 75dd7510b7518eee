"""A master template as it runs: its stages, in order, each with the capability that runs it,
its timeout, retry policy and quality gate. KAM checks and stores each stage (`to_json`, the
shape its `master_templates.stages` column holds) and sends it (`to_proto`); the orchestrator
pins a version (`PipelineTemplate.from_proto`) and makes one stage row per definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bitware.kam.v1 import templates_pb2
from bitware_core.convert import duration, seconds
from bitware_core.domain.retry import RetryPolicy

#: A stage's timeout when its definition names none.
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class StageDefinition:
    """One stage of a master template, as stored (defaults filled in)."""

    order: int
    name: str
    capability: str
    action: str
    structure_template: str = ""
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    min_quality_score: float = 0.0
    review_again_below_quality: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "name": self.name,
            "capability": self.capability,
            "action": self.action,
            "structure_template": self.structure_template,
            "params": dict(self.params),
            "timeout_s": self.timeout_s,
            "retry_policy": self.retry_policy.to_json(),
            "min_quality_score": self.min_quality_score,
            "review_again_below_quality": self.review_again_below_quality,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageDefinition:
        return cls(
            order=int(data["order"]),
            name=str(data["name"]),
            capability=str(data["capability"]),
            action=str(data["action"]),
            structure_template=str(data.get("structure_template", "")),
            params=dict(data.get("params") or {}),
            timeout_s=float(data.get("timeout_s", DEFAULT_TIMEOUT_S)),
            retry_policy=RetryPolicy.from_json(data.get("retry_policy") or {}),
            min_quality_score=float(data.get("min_quality_score", 0.0)),
            review_again_below_quality=bool(data.get("review_again_below_quality", False)),
        )

    def to_proto(self) -> templates_pb2.StageDefinition:
        return templates_pb2.StageDefinition(
            order=self.order,
            name=self.name,
            capability=self.capability,
            action=self.action,
            structure_template=self.structure_template,
            params=self.params,
            timeout=duration(self.timeout_s),
            retry_policy=self.retry_policy.to_proto(),
            min_quality_score=self.min_quality_score,
            review_again_below_quality=self.review_again_below_quality,
        )

    @classmethod
    def from_proto(cls, message: templates_pb2.StageDefinition) -> StageDefinition:
        """A stored stage as KAM sends it (a zero timeout or policy field means the default)."""
        return cls(
            order=message.order,
            name=message.name,
            capability=message.capability,
            action=message.action,
            structure_template=message.structure_template,
            params=dict(message.params),
            timeout_s=seconds(message.timeout) or DEFAULT_TIMEOUT_S,
            retry_policy=RetryPolicy.from_proto(message.retry_policy).resolved(),
            min_quality_score=message.min_quality_score,
            review_again_below_quality=message.review_again_below_quality,
        )


@dataclass(frozen=True)
class PipelineTemplate:
    """A pinned master template version, as the orchestrator runs it."""

    name: str
    version: int
    stages: tuple[StageDefinition, ...]
    deprecated: bool = False
    #: 0 means no time limit for the whole execution.
    execution_timeout_s: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PipelineTemplate:
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            stages=tuple(StageDefinition.from_json(s) for s in data.get("stages") or ()),
            deprecated=bool(data.get("deprecated", False)),
            execution_timeout_s=float(data.get("execution_timeout_s") or 0.0),
        )

    @classmethod
    def from_proto(cls, message: templates_pb2.MasterTemplate) -> PipelineTemplate:
        return cls(
            name=message.name,
            version=message.version,
            stages=tuple(StageDefinition.from_proto(s) for s in message.stages),
            deprecated=message.deprecated,
            execution_timeout_s=seconds(message.execution_timeout),
        )
