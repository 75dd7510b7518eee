"""What `watch` yields and `run` returns, as plain typed values (the protobuf message stays
available as `.raw`)."""

from __future__ import annotations

from dataclasses import dataclass

from bitware.granulator.v1 import granulator_pb2
from bitware.kam.v1 import requests_pb2
from bitware.orchestrator.v1 import orchestrator_pb2

_TERMINAL = frozenset(
    {
        orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED,
        orchestrator_pb2.EVENT_TYPE_EXECUTION_FAILED,
        orchestrator_pb2.EVENT_TYPE_EXECUTION_CANCELLED,
    }
)


def _short(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


@dataclass(frozen=True)
class ProgressEvent:
    """One event of an execution's log, in order; `sequence` counts from 1 with no gaps."""

    sequence: int
    #: What happened: `execution_queued`, `stage_progress`, `execution_succeeded`, …
    type: str
    #: The execution's status after it: `queued`, `running`, `succeeded`, `failed`, `cancelled`.
    status: str
    #: The execution's progress after it, from 0 to 1.
    progress: float
    message: str
    #: The worker's phase, for progress events (for example `generating`).
    phase: str
    stage_order: int
    attempt: int
    worker_id: str
    #: For failures: the machine-readable reason and the words.
    error_reason: str
    error_message: str
    raw: orchestrator_pb2.ExecutionEvent

    @property
    def terminal(self) -> bool:
        """True for the last event of an execution: it succeeded, failed or was cancelled."""
        return self.raw.type in _TERMINAL

    @classmethod
    def from_proto(cls, event: orchestrator_pb2.ExecutionEvent) -> ProgressEvent:
        return cls(
            sequence=event.sequence,
            type=_short(orchestrator_pb2.EventType.Name(event.type), "EVENT_TYPE_"),
            status=_short(
                orchestrator_pb2.ExecutionStatus.Name(event.execution_status), "EXECUTION_STATUS_"
            ),
            progress=event.progress,
            message=event.message,
            phase=event.phase,
            stage_order=event.stage_order,
            attempt=event.attempt,
            worker_id=event.worker_id,
            error_reason=event.error.reason,
            error_message=event.error.message,
            raw=event,
        )


@dataclass(frozen=True)
class RunResult:
    """What `run` returns: the request and execution as they ended, and the structure when the
    execution succeeded (None otherwise; `execution.error` then says why)."""

    request: requests_pb2.ClientRequest
    execution: orchestrator_pb2.Execution
    structure: granulator_pb2.GetStructureResponse | None

    @property
    def succeeded(self) -> bool:
        return self.execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED
