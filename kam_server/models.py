"""KAM's tables. Secrets are stored only as hashes: API keys, session and worker tokens as
SHA-256 of a high-entropy value, passwords as salted Argon2id (older scrypt hashes are
replaced at the next sign-in)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bitware_core.db import utcnow


class KamBase(DeclarativeBase):
    pass


class Client(KamBase):
    __tablename__ = "clients"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    company_name: Mapped[str] = mapped_column(String(200))
    contact_email: Mapped[str] = mapped_column(String(320))
    tier: Mapped[str] = mapped_column(String(20))
    monthly_budget_usd: Mapped[float]
    status: Mapped[str] = mapped_column(String(20), default="active")
    industry: Mapped[str] = mapped_column(String(100), default="")
    company_size: Mapped[str] = mapped_column(String(20), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(KamBase):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20))
    client_id: Mapped[str | None] = mapped_column(ForeignKey("clients.id"), default=None)
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class Session(KamBase):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(default=False)


class LoginFailure(KamBase):
    """Failed sign-ins per email (hashed, so the table reveals no addresses)."""

    __tablename__ = "login_failures"
    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    window_start: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(KamBase):
    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_client_created", "client_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked: Mapped[bool] = mapped_column(default=False)
    #: When the key stops working; None means never.
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    #: What the key may do (`bitware_core.auth.API_KEY_SCOPES`).
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["read", "write"])


class WorkerCredential(KamBase):
    __tablename__ = "worker_credentials"
    worker_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(default=False)


class MasterTemplate(KamBase):
    """One immutable version of a master template; `definition` holds the stages as JSON."""

    __tablename__ = "master_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    description: Mapped[str] = mapped_column(String(2000), default="")
    structure_type: Mapped[str] = mapped_column(String(40))
    stages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    allowed_tiers: Mapped[list[str]] = mapped_column(JSON, default=list)
    cost_estimate_usd: Mapped[float] = mapped_column(default=0.0)
    execution_timeout_s: Mapped[float] = mapped_column(default=0.0)
    deprecated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClientRequest(KamBase):
    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("client_id", "idempotency_key"),
        Index("ix_requests_client_created", "client_id", "created_at"),
        Index("ix_requests_client_charged", "client_id", "charged_at"),
        # For listing a client's requests by status, and the budget (`ledger.committed`).
        Index("ix_requests_client_status", "client_id", "status"),
        Index("ix_requests_client_reserved", "client_id", "reserved_usd"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    structure_type: Mapped[str] = mapped_column(String(40))
    master_template: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[int]
    urgency: Mapped[str] = mapped_column(String(20))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    execution_id: Mapped[str] = mapped_column(String(60), default="")
    #: Dollars held against the budget while the execution runs (the template's estimate).
    reserved_usd: Mapped[float] = mapped_column(default=0.0)
    #: Dollars charged for the work done, set when the outcome is settled.
    cost_usd: Mapped[float] = mapped_column(default=0.0)
    #: When the cost was charged: the month it counts against. None until settled.
    charged_at: Mapped[datetime | None] = mapped_column(default=None)
    usage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str] = mapped_column(String(60), default="")
    error_message: Mapped[str] = mapped_column(String(2000), default="")
    #: How many times the request was retried (RetryRequest re-runs its execution).
    retries: Mapped[int] = mapped_column(default=0)
    #: The run (by its `retries` count) whose outcome was charged last: the request is settled
    #: when `charged_at` is set and this equals `retries`.
    settled_retries: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RateBucket(KamBase):
    """A client's token bucket for calls that create, execute or retry requests (see
    `kam_server.ratelimit`); in the database so that every KAM replica draws from it."""

    __tablename__ = "rate_buckets"
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"), primary_key=True)
    tokens: Mapped[float]
    updated_at: Mapped[datetime]


class AuditEvent(KamBase):
    __tablename__ = "audit_events"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)


class WebhookEndpoint(KamBase):
    """Where a client's events are posted. The signing secret is not stored: it is derived from
    the id and KAM's webhook key (`kam_server.webhooks.signing_secret`); `key_id` names the key
    it was derived from, so that a replaced key file is noticed rather than signing wrongly."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_client", "client_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id"))
    url: Mapped[str] = mapped_column(String(2000))
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(String(200), default="")
    key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted: Mapped[bool] = mapped_column(default=False)


class WebhookDelivery(KamBase):
    """One event on its way to one endpoint; worked by `kam_server.delivery`. `seq` orders an
    endpoint's deliveries (only the oldest pending one of an endpoint is attempted), and
    `claimed_until` is the lease of the KAM process attempting it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "seq"),
        Index("ix_webhook_deliveries_client", "client_id", "seq"),
    )
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    client_id: Mapped[str] = mapped_column(String(40))
    #: The exact body posted on every attempt (the signature covers these bytes).
    payload: Mapped[str] = mapped_column(Text)
    #: `pending`, `succeeded` or `failed`.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    last_http_status: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    claim: Mapped[str] = mapped_column(String(40), default="")
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
