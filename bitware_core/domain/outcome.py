"""What a stage attempt comes to, as the worker reports it and the orchestrator records it: a
result (`output`, `job_id`, `Quality`) or a `StageError`, with its `Usage` either way.

The granulator stores a `StageOutcome` as its job's result (`to_json`), so that a repeated
`Process` answers from the database; it crosses the wire as `bitware.worker.v1.ProcessResponse`
(`to_proto`/`from_proto`); the orchestrator keeps a stage's best result's `Quality` in its
JSON columns. Every `from_json` reads the rows written before these types existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bitware.common.v1 import common_pb2
from bitware.worker.v1 import worker_pb2
from bitware_core.convert import duration, from_struct, seconds, to_struct
from bitware_core.domain.usage import Usage


@dataclass(frozen=True)
class Violation:
    """One broken rule; `path` is a JSON pointer into the structure ("" is the root)."""

    path: str
    rule: str
    message: str


@dataclass(frozen=True)
class Quality:
    """How good a structure is: a 0-100 score, its components (each 0-1), text that tells a
    generator what to fix, the rules it breaks; and what the stage makes of that: whether it
    is below the stage's minimum (or broken), broken (an integrity rule: never delivered), and
    whether its template accepts it below the minimum."""

    score: float = 0.0
    components: dict[str, float] = field(default_factory=dict)
    feedback: str = ""
    violations: tuple[Violation, ...] = ()
    below_threshold: bool = False
    integrity_failed: bool = False
    accept_below_minimum: bool = False

    @property
    def deliverable_below_minimum(self) -> bool:
        """Whether a result below the minimum may still be delivered: only when its template
        accepts that, and never when it breaks an integrity rule."""
        return self.accept_below_minimum and not self.integrity_failed

    def rank(self) -> tuple[bool, float]:
        """Orders attempts: an intact structure beats a broken one, then the higher score."""
        return (not self.integrity_failed, self.score)

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "components": dict(self.components),
            "feedback": self.feedback,
            "violations": [
                {"path": v.path, "rule": v.rule, "message": v.message} for v in self.violations
            ],
            "below_threshold": self.below_threshold,
            "integrity_failed": self.integrity_failed,
            "accept_below_minimum": self.accept_below_minimum,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Quality:
        """Any stored quality; the flags an older row lacks are false."""
        data = data or {}
        return cls(
            score=float(data.get("score", 0.0)),
            components={k: float(v) for k, v in (data.get("components") or {}).items()},
            feedback=str(data.get("feedback", "")),
            violations=tuple(
                Violation(str(v.get("path", "")), str(v.get("rule", "")), str(v.get("message", "")))
                for v in data.get("violations") or ()
            ),
            below_threshold=bool(data.get("below_threshold", False)),
            integrity_failed=bool(data.get("integrity_failed", False)),
            accept_below_minimum=bool(data.get("accept_below_minimum", False)),
        )

    def to_proto(self) -> common_pb2.QualityReport:
        return common_pb2.QualityReport(
            score=self.score,
            components=self.components,
            feedback=self.feedback,
            violations=[
                common_pb2.Violation(path=v.path, rule=v.rule, message=v.message)
                for v in self.violations
            ],
            below_threshold=self.below_threshold,
            integrity_failed=self.integrity_failed,
            accept_below_minimum=self.accept_below_minimum,
        )

    @classmethod
    def from_proto(cls, message: common_pb2.QualityReport) -> Quality:
        return cls(
            score=message.score,
            components=dict(message.components),
            feedback=message.feedback,
            violations=tuple(Violation(v.path, v.rule, v.message) for v in message.violations),
            below_threshold=message.below_threshold,
            integrity_failed=message.integrity_failed,
            accept_below_minimum=message.accept_below_minimum,
        )


@dataclass(frozen=True)
class StageError:
    """Why an attempt failed. `error_class` is a `bitware.worker.v1.ErrorClass` without its
    prefix (`TRANSIENT`, `INVALID_INPUT` …), which decides retries; `reason` the failure
    (`RATE_LIMITED` …); `retry_after` the seconds the provider asked to wait, if it did."""

    error_class: str
    reason: str
    message: str
    retry_after: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "error_class": self.error_class,
            "reason": self.reason,
            "message": self.message,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageError:
        return cls(
            error_class=str(data["error_class"]),
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            retry_after=float(data.get("retry_after", 0.0)),
        )

    def to_proto(self) -> worker_pb2.StageError:
        return worker_pb2.StageError(
            error_class=worker_pb2.ErrorClass.Value(f"ERROR_CLASS_{self.error_class}"),
            reason=self.reason,
            message=self.message,
            retry_after=duration(self.retry_after),
        )

    @classmethod
    def from_proto(cls, message: worker_pb2.StageError) -> StageError:
        return cls(
            error_class=worker_pb2.ErrorClass.Name(message.error_class).removeprefix(
                "ERROR_CLASS_"
            ),
            reason=message.reason,
            message=message.message,
            retry_after=seconds(message.retry_after),
        )


@dataclass(frozen=True)
class StageOutcome:
    """An attempt's end: a result (`output` handed to the next stage, the `job_id` that stores
    it, its `quality`) or an `error`, with what it used either way; `cancelled` when it was
    stopped before it ended (its usage is what it used so far)."""

    usage: Usage = field(default_factory=Usage)
    job_id: str = ""
    output: dict[str, Any] = field(default_factory=dict)
    quality: Quality = field(default_factory=Quality)
    error: StageError | None = None
    #: Worker-specific figures, for example `elements` → 42.
    metrics: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False

    @classmethod
    def failed(cls, error: StageError, usage: Usage) -> StageOutcome:
        return cls(usage=usage, error=error)

    def with_metrics(self, **metrics: float) -> StageOutcome:
        return replace(self, metrics={**self.metrics, **metrics})

    def to_json(self) -> dict[str, Any]:
        """The shape a granulator job's `result` holds: `{cancelled, usage}`, `{error, usage}`
        or `{job_id, output, quality, usage, metrics}`."""
        if self.cancelled:
            return {"cancelled": True, "usage": self.usage.to_json()}
        if self.error is not None:
            return {"error": self.error.to_json(), "usage": self.usage.to_json()}
        return {
            "job_id": self.job_id,
            "output": self.output,
            "quality": self.quality.to_json(),
            "usage": self.usage.to_json(),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageOutcome:
        usage = Usage.from_json(data.get("usage"))
        if data.get("cancelled"):
            return cls(usage=usage, cancelled=True)
        if data.get("error") is not None:
            return cls(usage=usage, error=StageError.from_json(data["error"]))
        return cls(
            usage=usage,
            job_id=str(data.get("job_id", "")),
            output=dict(data.get("output") or {}),
            quality=Quality.from_json(data.get("quality")),
            metrics={k: float(v) for k, v in (data.get("metrics") or {}).items()},
        )

    def to_proto(self) -> worker_pb2.ProcessResponse:
        """The `Process` answer (a cancelled outcome is not one: `Process` raises instead)."""
        response = worker_pb2.ProcessResponse(usage=self.usage.to_proto(), metrics=self.metrics)
        if self.error is not None:
            response.error.CopyFrom(self.error.to_proto())
        else:
            response.result.CopyFrom(
                worker_pb2.StageResult(
                    output=to_struct(self.output),
                    job_id=self.job_id,
                    quality=self.quality.to_proto(),
                )
            )
        return response

    @classmethod
    def from_proto(cls, message: worker_pb2.ProcessResponse) -> StageOutcome:
        """A worker's answer; one without a result is a failure (an older or broken worker's
        empty answer included)."""
        usage = Usage.from_proto(message.usage)
        metrics = dict(message.metrics)
        if message.WhichOneof("outcome") == "result":
            result = message.result
            return cls(
                usage=usage,
                job_id=result.job_id,
                output=from_struct(result.output),
                quality=Quality.from_proto(result.quality),
                metrics=metrics,
            )
        return cls(usage=usage, error=StageError.from_proto(message.error), metrics=metrics)
