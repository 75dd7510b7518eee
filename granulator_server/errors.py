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

    StageFailure                   ErrorClass (decides whether the orchestrator retries), reason
    ├── WorkerError                INTERNAL        WORKER_ERROR: a bug in the granulator
    ├── ProviderTransient          TRANSIENT (retried):
    │   ├── ProviderTimeout                        PROVIDER_TIMEOUT: no reply in time
    │   ├── ProviderUnreachable                    PROVIDER_UNREACHABLE: connection, stream
    │   ├── ProviderRateLimited                    RATE_LIMITED: 429, or no room in its headers
    │   └── ProviderUnavailable                    PROVIDER_UNAVAILABLE: 5xx
    ├── ProviderRefused            REFUSED         REFUSED: a refusal, never retried
    │   └── ContentFiltered        REFUSED         CONTENT_FILTERED: the content filter stopped it
    ├── InvalidOutput              INVALID_OUTPUT:
    │   ├── TruncatedOutput                        TRUNCATED: cut off even with more room
    │   ├── InvalidJson                            INVALID_JSON: no JSON object after re-asking
    │   └── SchemaViolation                        SCHEMA_VIOLATION: problems after re-asking
    ├── ProviderRejected           INVALID_INPUT   PROVIDER_REJECTED: the endpoint refused (4xx)
    │   ├── ProviderBadRequest     INVALID_INPUT   PROVIDER_BAD_REQUEST: a 400
    │   └── FormatRejected         INVALID_INPUT   FORMAT_REJECTED: a configured structured mode
    ├── InvalidStageInput          INVALID_INPUT:
    │   ├── NoPreviousJob                          NO_PREVIOUS_JOB: validate without a job
    │   └── PreviousJobNotReady                    PREVIOUS_JOB_NOT_READY: a job not completed
    ├── ProviderMisconfigured      INTERNAL        PROVIDER_MISCONFIGURED: 401, 403, 404
    ├── WorkerRestarted            TRANSIENT       WORKER_RESTARTED: the process running the job
    │                                                died (ended on restart)
    └── WorkerLost                 TRANSIENT       WORKER_LOST: no granulator marked the running
                                                     job alive for long

A `StageFailure`'s reason is its class's, as for `MeshError`; a family without a reason of its
own (`ProviderTransient`, `InvalidOutput`, `InvalidStageInput`) is raised as one of its
subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bitware_core.domain import Usage
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
    prefix and `reason` the failure (both the class's). `usage` holds what every attempt
    consumed before the failure."""

    error_class: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = ""

    def __init__(
        self, message: str, *, retry_after: float = 0.0, usage: Usage | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.usage = usage or Usage()


class WorkerError(StageFailure):
    """An exception the granulator did not expect (logged); reported so the stage is retried."""

    reason = "WORKER_ERROR"


class ProviderTransient(StageFailure):
    error_class = "TRANSIENT"


class ProviderTimeout(ProviderTransient):
    reason = "PROVIDER_TIMEOUT"


class ProviderUnreachable(ProviderTransient):
    reason = "PROVIDER_UNREACHABLE"


class ProviderRateLimited(ProviderTransient):
    reason = "RATE_LIMITED"


class ProviderUnavailable(ProviderTransient):
    reason = "PROVIDER_UNAVAILABLE"


class ProviderRefused(StageFailure):
    error_class = "REFUSED"
    reason = "REFUSED"


class ContentFiltered(ProviderRefused):
    reason = "CONTENT_FILTERED"


class InvalidOutput(StageFailure):
    error_class = "INVALID_OUTPUT"


class TruncatedOutput(InvalidOutput):
    reason = "TRUNCATED"


class InvalidJson(InvalidOutput):
    reason = "INVALID_JSON"


class SchemaViolation(InvalidOutput):
    reason = "SCHEMA_VIOLATION"


class ProviderRejected(StageFailure):
    error_class = "INVALID_INPUT"
    reason = "PROVIDER_REJECTED"


class ProviderBadRequest(ProviderRejected):
    reason = "PROVIDER_BAD_REQUEST"


class FormatRejected(ProviderRejected):
    reason = "FORMAT_REJECTED"


class InvalidStageInput(StageFailure):
    error_class = "INVALID_INPUT"


class NoPreviousJob(InvalidStageInput):
    """A validate stage whose previous job does not exist (or is another client's)."""

    reason = "NO_PREVIOUS_JOB"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class PreviousJobNotReady(InvalidStageInput):
    reason = "PREVIOUS_JOB_NOT_READY"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is {status}; nothing to validate")
        self.job_id, self.status = job_id, status


class ProviderMisconfigured(StageFailure):
    error_class = "INTERNAL"
    reason = "PROVIDER_MISCONFIGURED"


class WorkerRestarted(StageFailure):
    """A job that a previous process of this granulator left running when it died; the next
    process ends it so that no job stays `running` with nobody working on it."""

    error_class = "TRANSIENT"
    reason = "WORKER_RESTARTED"

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"granulator {worker_id} stopped while running this job and was restarted")
        self.worker_id = worker_id


class WorkerLost(StageFailure):
    """A running job that no granulator has marked alive for a long time: its process died and
    no process of the same worker id came back to end it (for example a replaced pod)."""

    error_class = "TRANSIENT"
    reason = "WORKER_LOST"

    def __init__(self, silent_seconds: float) -> None:
        super().__init__(
            f"the granulator running this job gave no sign of life for {silent_seconds:.0f}s"
        )
        self.silent_seconds = silent_seconds
