"""The statuses of requests (KAM), executions, stages and attempts (the orchestrator) and jobs
(the granulator), with the moves allowed between them.

Each is a `StrEnum`, so a member is the very string the database column and the JSON of an
event hold (`ExecutionStatus.RUNNING == "running"`), and a status read back from a row compares
equal to its member without converting. `can_move_to` is the transition table; the logic that
owns a status moves it only through the table (`executions.move_stage`, `requests.move` …).
"""

from __future__ import annotations

from enum import StrEnum


class RequestStatus(StrEnum):
    """A client's request at KAM."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _REQUEST_TERMINAL

    def can_move_to(self, to: RequestStatus) -> bool:
        return to in _REQUEST_MOVES[self]


_REQUEST_TERMINAL = frozenset(
    {RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED}
)
_REQUEST_MOVES: dict[RequestStatus, frozenset[RequestStatus]] = {
    # ExecuteRequest, CancelRequest.
    RequestStatus.PENDING: frozenset({RequestStatus.RUNNING, RequestStatus.CANCELLED}),
    # Back to pending when the orchestrator refused the execution; the outcome report.
    RequestStatus.RUNNING: frozenset(
        {
            RequestStatus.PENDING,
            RequestStatus.COMPLETED,
            RequestStatus.FAILED,
            RequestStatus.CANCELLED,
        }
    ),
    # RetryRequest; or a newer run (retried on the orchestrator) that a report follows.
    RequestStatus.FAILED: frozenset(
        {
            RequestStatus.RUNNING,
            RequestStatus.COMPLETED,
            RequestStatus.FAILED,
            RequestStatus.CANCELLED,
        }
    ),
    RequestStatus.COMPLETED: frozenset(),
    RequestStatus.CANCELLED: frozenset(),
}


class ExecutionStatus(StrEnum):
    """An execution at the orchestrator."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _EXECUTION_TERMINAL

    def can_move_to(self, to: ExecutionStatus) -> bool:
        return to in _EXECUTION_MOVES[self]


_EXECUTION_TERMINAL = frozenset(
    {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
_EXECUTION_MOVES: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.QUEUED: frozenset(
        {ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED, ExecutionStatus.FAILED}
    ),
    ExecutionStatus.RUNNING: frozenset(
        {ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.FAILED: frozenset({ExecutionStatus.QUEUED}),  # RetryExecution
    ExecutionStatus.SUCCEEDED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}


class StageStatus(StrEnum):
    """A stage of an execution at the orchestrator (its row is also its place in the queue)."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def can_move_to(self, to: StageStatus) -> bool:
        return to in _STAGE_MOVES[self]


_STAGE_MOVES: dict[StageStatus, frozenset[StageStatus]] = {
    StageStatus.PENDING: frozenset({StageStatus.QUEUED, StageStatus.CANCELLED}),
    StageStatus.QUEUED: frozenset({StageStatus.RUNNING, StageStatus.CANCELLED, StageStatus.FAILED}),
    # Queued again: declined, or its lease expired.
    StageStatus.RUNNING: frozenset(
        {
            StageStatus.SUCCEEDED,
            StageStatus.FAILED,
            StageStatus.RETRY_WAIT,
            StageStatus.QUEUED,
            StageStatus.CANCELLED,
        }
    ),
    StageStatus.RETRY_WAIT: frozenset(
        {StageStatus.RUNNING, StageStatus.CANCELLED, StageStatus.FAILED}
    ),
    StageStatus.FAILED: frozenset({StageStatus.QUEUED}),  # RetryExecution
    StageStatus.SUCCEEDED: frozenset(),
    StageStatus.CANCELLED: frozenset(),
}


class AttemptStatus(StrEnum):
    """One attempt at a stage, at the orchestrator: offered to a worker, then running, and
    ended once (an attempt row with `ended_at` set never changes again)."""

    OFFERED = "offered"
    RUNNING = "running"
    #: The worker declined the offer (the attempt does not count against the retry budget).
    DECLINED = "declined"
    SUCCEEDED = "succeeded"
    #: A result below the stage's minimum quality, or one breaking an integrity rule.
    BELOW_QUALITY = "below_quality"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    #: Its lease expired, or its result came too late.
    ABANDONED = "abandoned"


class JobStatus(StrEnum):
    """A granulator job: one stage attempt's work. A job runs until it ends once; the next
    run of the same attempt (a re-attached attempt after a restart) makes it running again,
    whatever it ended as, so jobs have no table of moves beyond that."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
