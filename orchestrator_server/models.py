"""The orchestrator's tables: executions, their stages and attempts, the event log, workers.

The queue is the `stages` table itself: a stage with status `queued` and `ready_at` in the past
is waiting; claiming it sets status `running`, bumps its `epoch` and sets a lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bitware_core.db import utcnow


class OrchestratorBase(DeclarativeBase):
    pass


class Execution(OrchestratorBase):
    __tablename__ = "executions"
    __table_args__ = (
        # Idempotency keys are scoped per client: another client's key never matches.
        UniqueConstraint("client_id", "idempotency_key", name="uq_executions_client_idempotency"),
        # For the claim's count of each client's running executions.
        Index("ix_executions_status_client", "status", "client_id"),
        # Housekeeping's once-a-second reads: executions past their deadline, and ended ones
        # whose outcome KAM has not heard yet (neither may walk every queued or ended row).
        Index("ix_executions_status_deadline", "status", "deadline_at"),
        Index("ix_executions_unreported", "outcome_reported", "status"),
    )
    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(60), default="")
    client_id: Mapped[str] = mapped_column(String(60), index=True)
    template_name: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[int]
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int]  # 1 low … 4 critical
    #: The most of this client's executions that may run at once (its tier's limit; 0 = none).
    client_concurrency: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str] = mapped_column(String(60), default="")
    error: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    last_sequence: Mapped[int] = mapped_column(default=0)
    #: How many stages the execution has, and how many have succeeded (its progress).
    stages_total: Mapped[int] = mapped_column(default=0)
    stages_done: Mapped[int] = mapped_column(default=0)
    outcome_reported: Mapped[bool] = mapped_column(default=False)
    #: How many times RetryExecution has re-run it; its outcome report names the run it ends.
    retries: Mapped[int] = mapped_column(default=0)
    deadline_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Stage(OrchestratorBase):
    __tablename__ = "stages"
    __table_args__ = (
        Index("ix_stages_queue", "status", "capability", "queue_key"),
        # A client's own queue: its waiting turns, and its stages for GetQueue.
        Index("ix_stages_client_queue", "client_id", "status", "queue_key"),
        # The queue's figures per priority (GetQueue, metrics) from the index alone, and the
        # stages that waited past the queue-wait timeout as one range per priority.
        Index("ix_stages_status_priority_queued", "status", "priority", "queued_at"),
    )
    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id"), index=True)
    #: The execution's client (copied, so that a client's queue is one index range).
    client_id: Mapped[str] = mapped_column(String(60), default="")
    order: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    capability: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(100))
    structure_template: Mapped[str] = mapped_column(String(100), default="")
    params: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    timeout_s: Mapped[float] = mapped_column(default=120.0)
    retry_policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    min_quality: Mapped[float] = mapped_column(default=0.0)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    priority: Mapped[int] = mapped_column(default=2)
    #: Attempts so far; never reset, so (execution, stage, attempt) names one piece of work.
    attempts: Mapped[int] = mapped_column(default=0)
    #: Attempts made before the last RetryExecution; the retry policy counts from here.
    attempts_base: Mapped[int] = mapped_column(default=0)
    epoch: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str] = mapped_column(String(60), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Queue order: enqueue time moved earlier by priority (see executions.queue_key), plus
    #: executions.WAITING_TURN while the execution waits for its client's turn.
    queue_key: Mapped[float] = mapped_column(default=0.0)
    #: After its holder died: the worker that may still hold this attempt's result.
    reattach_worker: Mapped[str] = mapped_column(String(100), default="")
    feedback: Mapped[str] = mapped_column(String(4000), default="")
    output: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: `sha256:<hex>` of an output too large to keep inline (see `Blob`).
    output_ref: Mapped[str] = mapped_column(String(80), default="")
    job_id: Mapped[str] = mapped_column(String(60), default="")
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    best: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Attempt(OrchestratorBase):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("stage_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    stage_id: Mapped[str] = mapped_column(ForeignKey("stages.id"), index=True)
    number: Mapped[int]
    epoch: Mapped[int]
    worker_id: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(20), default="offered")
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quality_score: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class Event(OrchestratorBase):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("execution_id", "sequence"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(String(60))
    sequence: Mapped[int]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Blob(OrchestratorBase):
    """A large stage output, stored once by its SHA-256 and verified whenever it is read. It
    lives in the database so that every replica can read it."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int]
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(OrchestratorBase):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    address: Mapped[str] = mapped_column(String(200))
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_concurrency: Mapped[int] = mapped_column(default=1)
    active_stages: Mapped[int] = mapped_column(default=0)
    version: Mapped[str] = mapped_column(String(50), default="")
    state: Mapped[str] = mapped_column(String(20), default="healthy")
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
