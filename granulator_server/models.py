"""The granulator's tables: structure templates, jobs (one per stage attempt), their element
trees and the model calls each job made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bitware_core.db import utcnow


class GranulatorBase(DeclarativeBase):
    pass


class Job(GranulatorBase):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("execution_id", "stage_id", "attempt"),)
    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(60), index=True)
    execution_id: Mapped[str] = mapped_column(String(60))
    stage_id: Mapped[str] = mapped_column(String(60))
    attempt: Mapped[int]
    action: Mapped[str] = mapped_column(String(40))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    structure_type: Mapped[str] = mapped_column(String(40))
    template_name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="running", index=True)
    #: The granulator (worker id) that runs or ran the job: the granulators of a mesh share one
    #: job store, and one starting up ends only the jobs its own previous process left running.
    worker_id: Mapped[str] = mapped_column(String(100), default="", server_default="")
    document: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    validations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    element_count: Mapped[int] = mapped_column(default=0)
    error_message: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Element(GranulatorBase):
    __tablename__ = "elements"
    __table_args__ = (Index("ix_elements_job", "job_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int]  # pre-order index within the job
    parent_position: Mapped[int]  # -1 for the root
    kind: Mapped[str] = mapped_column(String(40))
    order: Mapped[int]
    title: Mapped[str] = mapped_column(String(1000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelCall(GranulatorBase):
    """One call to a model made by a job (from the provider's `CallRecord`): texts are cut to a
    bound, and no key or header is ever kept."""

    __tablename__ = "model_calls"
    __table_args__ = (UniqueConstraint("job_id", "sequence"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    sequence: Mapped[int]  # from 1, in the order the job made them
    started_at: Mapped[datetime]
    endpoint: Mapped[str] = mapped_column(String(500))
    model: Mapped[str] = mapped_column(String(200))
    format_mode: Mapped[str] = mapped_column(String(40))
    why: Mapped[str] = mapped_column(String(40))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_format: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    reply: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(40))
    error: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[int]
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    tokens_estimated: Mapped[bool]
    cost_usd: Mapped[float]
    truncated: Mapped[bool]


class Template(GranulatorBase):
    """A structure template; the six seeds are inserted on first start, admins add more."""

    __tablename__ = "structure_templates"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    structure_type: Mapped[str] = mapped_column(String(40), index=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    json_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    prompt_template: Mapped[str] = mapped_column(Text)
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    defaults: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
