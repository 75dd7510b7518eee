"""The vocabulary the servers share, as typed values: what a stage attempt used (`Usage`), what
it came to (`StageOutcome`: a result with its `Quality`, or a `StageError`), how a stage is
retried (`RetryPolicy`), a master template's stages (`StageDefinition`, `PipelineTemplate`),
and the statuses of requests, executions, stages and jobs with the
moves allowed between them. Each is converted to and from protobuf only at the edge
(`Usage.from_proto`, `RetryPolicy.to_proto` …) and to and from the JSON columns that store it
(`to_json`/`from_json`, which read every shape an older row may hold)."""

from bitware_core.domain.outcome import Quality, StageError, StageOutcome, Violation
from bitware_core.domain.retry import RetryPolicy
from bitware_core.domain.status import (
    AttemptStatus,
    ExecutionStatus,
    JobStatus,
    RequestStatus,
    StageStatus,
)
from bitware_core.domain.template import PipelineTemplate, StageDefinition
from bitware_core.domain.usage import ProviderUsage, Usage

__all__ = [
    "AttemptStatus",
    "ExecutionStatus",
    "JobStatus",
    "PipelineTemplate",
    "ProviderUsage",
    "Quality",
    "RequestStatus",
    "RetryPolicy",
    "StageDefinition",
    "StageError",
    "StageOutcome",
    "StageStatus",
    "Usage",
    "Violation",
]
