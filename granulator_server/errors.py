"""The granulator's errors.

Two families. `MeshError` subclasses cross the wire as a gRPC status (mapped once by
`bitware_core.server`); `StageFailure` subclasses are *work* failures that `Process` reports
inside its response as a typed `StageError` (with the usage spent so far), never as a status::

    MeshError (bitware_core.errors)    one class per ErrorInfo reason; its fields are metadata
    ├── InvalidArgument
    │   └── InvalidTemplate        INVALID_TEMPLATE (field violations of a structure template)
    ├── NotFound
    │   ├── JobNotFound            JOB_NOT_FOUND: job_id
    │   └── TemplateNotFound       TEMPLATE_NOT_FOUND: template (a name or a query)
    ├── AlreadyExists
    │   └── TemplateExists         TEMPLATE_EXISTS: template
    ├── FailedPrecondition
    │   ├── NoReservation          NO_RESERVATION: stage_id, attempt, epoch (Process without an
    │   │                            accepted offer, or from an older epoch)
    │   └── NoStructure            NO_STRUCTURE: job_id, status, structure_job_id (a job that
    │                                stored none: failed, or a validation pointing at the job
    │                                that did)
    └── Cancelled
        └── StageCancelled         STAGE_CANCELLED: stage_id, attempt (Process of a stage that
                                     Cancel stopped)

    StageFailure                   (error class decides whether the orchestrator retries)
    ├── ProviderTransient          TRANSIENT: 429, 5xx, timeouts, connection errors
    ├── ProviderRefused            REFUSED: refusal or content filter, never retried
    ├── InvalidOutput              INVALID_OUTPUT: unparseable, schema-breaking or truncated
    ├── ProviderRejected           INVALID_INPUT: the endpoint rejected the request (4xx)
    ├── InvalidStageInput          INVALID_INPUT: e.g. validate without a previous job
    ├── ProviderMisconfigured      INTERNAL: authentication or model errors at the endpoint
    ├── WorkerRestarted            TRANSIENT: the process running the job died (ended on restart)
    └── WorkerLost                 TRANSIENT: no granulator marked the running job alive for long
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitware_core.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)


@dataclass(eq=False)
class JobNotFound(NotFound):
    reason = "JOB_NOT_FOUND"
    job_id: str

    def __post_init__(self) -> None:
        super().__init__(f"job {self.job_id!r} not found")


@dataclass(eq=False)
class TemplateNotFound(NotFound):
    reason = "TEMPLATE_NOT_FOUND"
    template: str  # the name, or what the caller searched for
    message: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message or f"structure template {self.template!r} not found")


@dataclass(eq=False)
class TemplateExists(AlreadyExists):
    reason = "TEMPLATE_EXISTS"
    template: str

    def __post_init__(self) -> None:
        super().__init__(f"structure template {self.template!r} already exists")


class InvalidTemplate(InvalidArgument):
    reason = "INVALID_TEMPLATE"


@dataclass(eq=False)
class NoReservation(FailedPrecondition):
    reason = "NO_RESERVATION"
    stage_id: str
    attempt: int
    epoch: int

    def __post_init__(self) -> None:
        super().__init__(f"no accepted offer for stage {self.stage_id} attempt {self.attempt}")


@dataclass(eq=False)
class NoStructure(FailedPrecondition):
    """GetStructure of a job without a structure; a validation job names the job that has it."""

    reason = "NO_STRUCTURE"
    job_id: str
    status: str
    structure_job_id: str | None = None

    def __post_init__(self) -> None:
        if self.structure_job_id is not None:
            super().__init__(
                f"job {self.job_id} validated job {self.structure_job_id}; "
                "the structure is stored there"
            )
        else:
            super().__init__(f"job {self.job_id} is {self.status}; it has no structure")


@dataclass(eq=False)
class StageCancelled(Cancelled):
    reason = "STAGE_CANCELLED"
    stage_id: str
    attempt: int

    def __post_init__(self) -> None:
        super().__init__(f"stage {self.stage_id} attempt {self.attempt} was cancelled")


class StageFailure(Exception):
    """A stage's work failed; `error_class` names a `bitware.worker.v1.ErrorClass` without its
    prefix. `usage` holds what every attempt consumed before the failure."""

    error_class = "INTERNAL"

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: float = 0.0,
        usage: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.usage: dict[str, Any] = usage or {}


class ProviderTransient(StageFailure):
    error_class = "TRANSIENT"


class ProviderRefused(StageFailure):
    error_class = "REFUSED"


class InvalidOutput(StageFailure):
    error_class = "INVALID_OUTPUT"


class ProviderRejected(StageFailure):
    error_class = "INVALID_INPUT"


class InvalidStageInput(StageFailure):
    error_class = "INVALID_INPUT"


class ProviderMisconfigured(StageFailure):
    error_class = "INTERNAL"


class WorkerRestarted(StageFailure):
    """A job that a previous process of this granulator left running when it died; the next
    process ends it so that no job stays `running` with nobody working on it."""

    error_class = "TRANSIENT"

    def __init__(self, worker_id: str) -> None:
        super().__init__(
            "WORKER_RESTARTED",
            f"granulator {worker_id} stopped while running this job and was restarted",
        )


class WorkerLost(StageFailure):
    """A running job that no granulator has marked alive for a long time: its process died and
    no process of the same worker id came back to end it (for example a replaced pod)."""

    error_class = "TRANSIENT"

    def __init__(self, silent_seconds: float) -> None:
        super().__init__(
            "WORKER_LOST",
            f"the granulator running this job gave no sign of life for {silent_seconds:.0f}s",
        )
