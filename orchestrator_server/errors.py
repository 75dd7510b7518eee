"""The orchestrator's domain errors.

MeshError (bitware_core.errors)
├── NotFound
│   ├── ExecutionNotFound
│   └── WorkerNotFound
└── FailedPrecondition
    ├── ExecutionFinished      (reason EXECUTION_FINISHED)
    ├── StaleAttempt           (reason STALE_ATTEMPT: a result from an older epoch)
    └── TemplateInvalid        (reason TEMPLATE_INVALID: a stored template that cannot run)
"""

from __future__ import annotations

from bitware_core.errors import DataLoss, FailedPrecondition, NotFound


class ExecutionNotFound(NotFound):
    reason = "EXECUTION_NOT_FOUND"


class WorkerNotFound(NotFound):
    reason = "WORKER_NOT_FOUND"


class ExecutionFinished(FailedPrecondition):
    reason = "EXECUTION_FINISHED"


class StaleAttempt(FailedPrecondition):
    reason = "STALE_ATTEMPT"


class TemplateInvalid(FailedPrecondition):
    reason = "TEMPLATE_INVALID"


class CorruptPayload(DataLoss):
    reason = "CORRUPT_PAYLOAD"
