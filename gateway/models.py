"""The shapes of request bodies and enum query parameters, for validation and for OpenAPI.

Enum values are the proto enum names without their prefix, lower-case (`course`, `high`,
`running`); answers carry the full proto names (`STRUCTURE_TYPE_COURSE`), as protobuf JSON does.
Only the shape is checked here; every rule about the values (required topic, granularity range,
tier limits) is the servers', so their field violations reach the caller unchanged. The limits the
servers enforce are still stated in the schema (`json_schema_extra`: stated, not checked here),
so that generated clients know them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

INT32_MAX = 2**31 - 1

Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]


class StructureType(StrEnum):
    """bitware.common.v1.StructureType."""

    COURSE = "course"
    QUIZ = "quiz"
    NOVEL = "novel"
    WORKFLOW = "workflow"
    KNOWLEDGE_MAP = "knowledge_map"
    LEARNING_PATH = "learning_path"


class Urgency(StrEnum):
    """bitware.kam.v1.Urgency."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class RequestStatus(StrEnum):
    """bitware.kam.v1.RequestStatus."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExecutionStatus(StrEnum):
    """bitware.orchestrator.v1.ExecutionStatus."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStatus(StrEnum):
    """bitware.granulator.v1.JobStatus."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Tier(StrEnum):
    """bitware.common.v1.Tier."""

    BASIC = "basic"
    STANDARD = "standard"
    PREMIUM = "premium"
    ENTERPRISE = "enterprise"


class ClientStatus(StrEnum):
    """bitware.kam.v1.ClientStatus."""

    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(StrEnum):
    """bitware.common.v1.Role."""

    ADMIN = "admin"
    CLIENT = "client"
    SUPPORT = "support"


class Body(BaseModel):
    """Request bodies refuse unknown fields, so a misspelt field is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class LoginBody(Body):
    email: str = Field(description="The user's email, case-insensitive.")
    password: str = Field(description="The user's password.")


class CreateRequestBody(Body):
    topic: str = Field(
        description="What the structure is about, for example `AI Development`.",
        json_schema_extra={"minLength": 1, "maxLength": 500},
    )
    structure_type: StructureType | None = Field(
        None, description="The kind of structure; may be left out when master_template is set."
    )
    audience: str = Field(
        "",
        description="Who it is for, for example `beginners`.",
        json_schema_extra={"maxLength": 200},
    )
    granularity: Int32 = Field(
        0,
        description="From 1 (coarse) to 5 (detailed); 0 = default.",
        json_schema_extra={"maximum": 5},
    )
    urgency: Urgency | None = Field(None, description="How soon; maps to the priority.")
    constraints: dict[str, str] = Field(
        default_factory=dict, description="Hard requirements, for example `max_modules` → `6`."
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="Preferences, for example `language` → `en`."
    )
    master_template: str = Field("", description="Empty means the structure type's default.")
    idempotency_key: str = Field(
        "",
        description="The same key returns the same request.",
        json_schema_extra={"maxLength": 200},
    )
    client_id: str = Field("", description="Empty means the caller's own client; admins set it.")


class CancelExecutionBody(Body):
    reason: str = Field("", description="Why, recorded in the execution's event log.")


class CreateClientBody(Body):
    company_name: str
    contact_email: str
    tier: Tier | None = None
    monthly_budget_usd: float = Field(0.0, description="0 means nothing may be spent.")
    industry: str = ""
    company_size: str = Field("", description="For example `1-10` or `1000+`.")


class CreateApiKeyBody(Body):
    name: str = Field("", description="A name for people.")
    scopes: list[str] = Field(
        default_factory=list,
        description="`read` (Get, List, Watch), `write` (create, execute, cancel, …) or both; "
        "empty means both.",
    )
    expire_time: datetime | None = Field(
        None, description="When the key stops working (RFC 3339, UTC if no offset); none = never."
    )


class CreateUserBody(Body):
    email: str
    password: str = Field(description="The initial password.")
    display_name: str = ""
    role: Role | None = None
    client_id: str = Field("", description="The client of a `client` user.")


class CreateWebhookBody(Body):
    url: str = Field(description="An https:// URL to post events to.", max_length=2000)
    event_types: list[str] = Field(
        default_factory=list,
        description="`request.completed`, `request.failed`, `request.cancelled`, "
        "`budget.threshold`; empty means all.",
    )
    description: str = Field("", description="A note for people.", max_length=200)
    client_id: str = Field("", description="The client; empty means the caller's own.")
