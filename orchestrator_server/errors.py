"""The orchestrator's domain errors.

One class per `ErrorInfo.reason`; the fields after the reason reach the caller as
`ErrorInfo.metadata` (see `bitware_core.errors`)::

    MeshError (bitware_core.errors)
    ├── NotFound
    │   ├── ExecutionNotFound      EXECUTION_NOT_FOUND: execution_id
    │   ├── WorkerNotFound         WORKER_NOT_FOUND: worker_id
    │   └── TemplateNotFound       TEMPLATE_NOT_FOUND: template, version (KAM does not have it)
    ├── FailedPrecondition
    │   ├── ExecutionFinished      EXECUTION_FINISHED: execution_id, status
    │   ├── ExecutionNotFailed     NOT_FAILED: execution_id, status (only a failed one is retried)
    │   ├── StaleAttempt           STALE_ATTEMPT: stage_id, epoch, current_epoch (a result from
    │   │                            an attempt that is no longer the stage's current one)
    │   ├── TemplateInvalid        TEMPLATE_INVALID: template, version (a stored template that
    │   │                            cannot run; with field violations)
    │   └── TemplateDeprecated     TEMPLATE_DEPRECATED: template, version
    └── DataLoss
        └── CorruptPayload         CORRUPT_PAYLOAD: reference (a stored output missing or not
                                     matching its checksum)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitware_core.errors import DataLoss, FailedPrecondition, FieldViolation, NotFound


@dataclass(eq=False)
class ExecutionNotFound(NotFound):
    reason = "EXECUTION_NOT_FOUND"
    execution_id: str

    def __post_init__(self) -> None:
        super().__init__(f"execution {self.execution_id!r} not found")


@dataclass(eq=False)
class WorkerNotFound(NotFound):
    reason = "WORKER_NOT_FOUND"
    worker_id: str
    message: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message or f"worker {self.worker_id!r} not found")


@dataclass(eq=False)
class TemplateNotFound(NotFound):
    """KAM has no such master template (`message` is KAM's)."""

    reason = "TEMPLATE_NOT_FOUND"
    template: str
    version: int | None = None  # None: the latest was asked for
    message: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message or "template not found")


@dataclass(eq=False)
class ExecutionFinished(FailedPrecondition):
    """The execution (or one of its stages) is past the state the call needs."""

    reason = "EXECUTION_FINISHED"
    execution_id: str
    status: str
    message: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message or f"execution {self.execution_id} is already {self.status}")


@dataclass(eq=False)
class ExecutionNotFailed(FailedPrecondition):
    reason = "NOT_FAILED"
    execution_id: str
    status: str

    def __post_init__(self) -> None:
        super().__init__(
            f"execution {self.execution_id} is {self.status}; only failed executions are retried"
        )


@dataclass(eq=False)
class StaleAttempt(FailedPrecondition):
    """A worker's result or progress for an attempt that is no longer the stage's current one
    (a newer epoch claimed it, or the stage ended)."""

    reason = "STALE_ATTEMPT"
    stage_id: str
    epoch: int
    current_epoch: int

    def __post_init__(self) -> None:
        super().__init__(f"stage {self.stage_id} attempt epoch {self.epoch} is no longer current")


@dataclass(eq=False)
class TemplateInvalid(FailedPrecondition):
    """A stored master template that cannot run: no stages, or stages not numbered 1..N."""

    reason = "TEMPLATE_INVALID"
    template: str
    version: int
    violations: list[FieldViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        problem = "its stages are not numbered 1..N" if self.violations else "it has no stages"
        super().__init__(
            f"master template {self.template!r} version {self.version} cannot run: {problem}",
            violations=self.violations,
        )


@dataclass(eq=False)
class TemplateDeprecated(FailedPrecondition):
    reason = "TEMPLATE_DEPRECATED"
    template: str
    version: int

    def __post_init__(self) -> None:
        super().__init__(f"template {self.template!r} is deprecated")


@dataclass(eq=False)
class CorruptPayload(DataLoss):
    reason = "CORRUPT_PAYLOAD"
    reference: str
    missing: bool  # False: present, but its checksum does not match

    def __post_init__(self) -> None:
        problem = "is missing" if self.missing else "does not match its checksum"
        super().__init__(f"stage output {self.reference} {problem}")
