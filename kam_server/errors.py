"""KAM's domain errors (each maps to one gRPC status in `bitware_core.server`).

One class per `ErrorInfo.reason`; the fields after the reason reach the caller as
`ErrorInfo.metadata` (see `bitware_core.errors`)::

    MeshError (bitware_core.errors)
    ├── NotFound
    │   ├── ClientNotFound            CLIENT_NOT_FOUND: client_id (from bitware_core.errors)
    │   ├── UserNotFound              USER_NOT_FOUND: user_id
    │   ├── RequestNotFound           REQUEST_NOT_FOUND: request_id
    │   ├── TemplateNotFound          TEMPLATE_NOT_FOUND: template, version
    │   ├── ApiKeyNotFound            API_KEY_NOT_FOUND: api_key_id
    │   ├── WorkerCredentialNotFound  WORKER_CREDENTIAL_NOT_FOUND: worker_id
    │   └── WebhookEndpointNotFound   WEBHOOK_ENDPOINT_NOT_FOUND: endpoint_id
    ├── ResourceExhausted
    │   ├── BudgetExceeded            BUDGET_EXCEEDED: client_id, needed_usd, remaining_usd
    │   ├── TierLimitExceeded         (a tier's count limit; only its subclasses are raised)
    │   │   ├── UserLimitReached      TIER_LIMIT_USERS: client_id, tier, limit
    │   │   └── RequestLimitReached   TIER_LIMIT_REQUESTS: client_id, tier, limit
    │   ├── RateLimited               RATE_LIMITED: client_id, tier, requests_per_second, burst
    │   │                               (with a retry delay)
    │   ├── LoginThrottled            LOGIN_THROTTLED (with a retry delay)
    │   └── WebhookLimit              WEBHOOK_LIMIT: client_id, limit
    ├── PermissionDenied
    │   └── TierNotAllowed            (what a tier may not use; only its subclasses are raised)
    │       ├── TemplateNotInTier     TIER_TEMPLATE: tier, template
    │       └── PriorityNotInTier     TIER_PRIORITY: tier, priority, max_priority
    ├── FailedPrecondition
    │   ├── ClientSuspended           CLIENT_SUSPENDED: client_id
    │   ├── TemplateDeprecated        TEMPLATE_DEPRECATED: template
    │   ├── LastAdmin                 LAST_ADMIN: user_id
    │   ├── RequestFinished           REQUEST_FINISHED: request_id, status
    │   ├── RequestNotFailed          NOT_FAILED: request_id, status (only a failed request
    │   │                               that ran an execution is retried)
    │   ├── ExecutionMismatch         EXECUTION_MISMATCH: request_id, execution_id,
    │   │                               request_execution_id
    │   └── OrchestratorRefused       ORCHESTRATOR_REFUSED: code (the orchestrator's status)
    └── Unauthenticated
        ├── BadCredential             BAD_CREDENTIAL (never says which part was wrong)
        └── ApiKeyExpired             API_KEY_EXPIRED: api_key_id, expire_time
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bitware_core.errors import ClientNotFound as ClientNotFound  # raised by bitware_core.auth too
from bitware_core.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)


@dataclass(eq=False)
class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"
    user_id: str

    def __post_init__(self) -> None:
        super().__init__(f"user {self.user_id!r} not found")


@dataclass(eq=False)
class RequestNotFound(NotFound):
    reason = "REQUEST_NOT_FOUND"
    request_id: str

    def __post_init__(self) -> None:
        super().__init__(f"request {self.request_id!r} not found")


@dataclass(eq=False)
class TemplateNotFound(NotFound):
    """A master template by name, and version when one was asked for (None: the latest)."""

    reason = "TEMPLATE_NOT_FOUND"
    template: str
    version: int | None = None

    def __post_init__(self) -> None:
        suffix = f" version {self.version}" if self.version else ""
        super().__init__(f"master template {self.template!r}{suffix} not found")


@dataclass(eq=False)
class ApiKeyNotFound(NotFound):
    reason = "API_KEY_NOT_FOUND"
    api_key_id: str

    def __post_init__(self) -> None:
        super().__init__(f"API key {self.api_key_id!r} not found")


@dataclass(eq=False)
class WorkerCredentialNotFound(NotFound):
    reason = "WORKER_CREDENTIAL_NOT_FOUND"
    worker_id: str

    def __post_init__(self) -> None:
        super().__init__(f"worker credential {self.worker_id!r} not found")


@dataclass(eq=False)
class WebhookEndpointNotFound(NotFound):
    reason = "WEBHOOK_ENDPOINT_NOT_FOUND"
    endpoint_id: str

    def __post_init__(self) -> None:
        super().__init__(f"webhook endpoint {self.endpoint_id!r} not found")


@dataclass(eq=False)
class BudgetExceeded(ResourceExhausted):
    """The client's monthly budget, less what is spent and reserved, cannot hold the estimate."""

    reason = "BUDGET_EXCEEDED"
    client_id: str
    needed_usd: float = field(metadata={"format": ".4f"})
    remaining_usd: float = field(metadata={"format": ".4f"})

    def __post_init__(self) -> None:
        super().__init__(
            f"executing needs ${self.needed_usd:.2f} but only ${self.remaining_usd:.2f} of the "
            "monthly budget is left"
        )


class TierLimitExceeded(ResourceExhausted):
    """A count the client's tier limits is reached; raised as one of its subclasses."""

    reason = "TIER_LIMIT"


@dataclass(eq=False)
class UserLimitReached(TierLimitExceeded):
    reason = "TIER_LIMIT_USERS"
    client_id: str
    tier: str
    limit: int

    def __post_init__(self) -> None:
        super().__init__(f"tier {self.tier} allows {self.limit} users per client")


@dataclass(eq=False)
class RequestLimitReached(TierLimitExceeded):
    reason = "TIER_LIMIT_REQUESTS"
    client_id: str
    tier: str
    limit: int  # requests a month

    def __post_init__(self) -> None:
        super().__init__(f"tier {self.tier} allows {self.limit} requests a month")


@dataclass(eq=False)
class RateLimited(ResourceExhausted):
    """The client's token bucket is empty; `retry_after` says when it holds a token again."""

    reason = "RATE_LIMITED"
    client_id: str
    tier: str
    requests_per_second: float
    burst: int
    retry_after: float  # seconds; sent as RetryInfo, not as metadata

    def __post_init__(self) -> None:
        super().__init__(
            f"tier {self.tier} allows {self.requests_per_second:g} requests a second "
            f"(bursts of {self.burst}); try again in {self.retry_after:.1f} s",
            retry_after=self.retry_after,
        )


@dataclass(eq=False)
class LoginThrottled(ResourceExhausted):
    """Too many failed sign-ins for one email (which is not echoed back)."""

    reason = "LOGIN_THROTTLED"
    retry_after: float  # seconds; sent as RetryInfo

    def __post_init__(self) -> None:
        super().__init__(
            "too many failed sign-ins for this email; try again later",
            retry_after=self.retry_after,
        )


@dataclass(eq=False)
class WebhookLimit(ResourceExhausted):
    reason = "WEBHOOK_LIMIT"
    client_id: str
    limit: int

    def __post_init__(self) -> None:
        super().__init__(
            f"client {self.client_id} has {self.limit} webhook endpoints; delete one first"
        )


class TierNotAllowed(PermissionDenied):
    """Something the client's tier may not use; raised as one of its subclasses."""

    reason = "TIER_NOT_ALLOWED"


@dataclass(eq=False)
class TemplateNotInTier(TierNotAllowed):
    reason = "TIER_TEMPLATE"
    tier: str
    template: str

    def __post_init__(self) -> None:
        super().__init__(f"tier {self.tier} may not use template {self.template!r}")


@dataclass(eq=False)
class PriorityNotInTier(TierNotAllowed):
    reason = "TIER_PRIORITY"
    tier: str
    priority: str  # the one asked for
    max_priority: str

    def __post_init__(self) -> None:
        super().__init__(f"tier {self.tier} allows priority up to {self.max_priority}")


@dataclass(eq=False)
class ClientSuspended(FailedPrecondition):
    reason = "CLIENT_SUSPENDED"
    client_id: str

    def __post_init__(self) -> None:
        super().__init__(f"client {self.client_id} is suspended: no new requests or executions")


@dataclass(eq=False)
class TemplateDeprecated(FailedPrecondition):
    reason = "TEMPLATE_DEPRECATED"
    template: str

    def __post_init__(self) -> None:
        super().__init__(f"master template {self.template!r} is deprecated")


@dataclass(eq=False)
class LastAdmin(FailedPrecondition):
    """Demoting, deactivating or deleting `user_id` would leave no active admin."""

    reason = "LAST_ADMIN"
    user_id: str

    def __post_init__(self) -> None:
        super().__init__("this is the last active admin; make another admin first")


@dataclass(eq=False)
class RequestFinished(FailedPrecondition):
    """The request is past the state the call needs (`message` says which)."""

    reason = "REQUEST_FINISHED"
    request_id: str
    status: str
    message: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message or f"request {self.request_id} is {self.status}")


@dataclass(eq=False)
class RequestNotFailed(FailedPrecondition):
    reason = "NOT_FAILED"
    request_id: str
    status: str

    def __post_init__(self) -> None:
        super().__init__(
            f"request {self.request_id} is {self.status}: only a failed request that ran an "
            "execution can be retried"
        )


@dataclass(eq=False)
class ExecutionMismatch(FailedPrecondition):
    """An outcome report names another execution than the one the request runs."""

    reason = "EXECUTION_MISMATCH"
    request_id: str
    execution_id: str  # the one reported
    request_execution_id: str  # the one the request runs

    def __post_init__(self) -> None:
        super().__init__(
            f"request {self.request_id} runs execution {self.request_execution_id}, "
            f"not {self.execution_id}"
        )


@dataclass(eq=False)
class OrchestratorRefused(FailedPrecondition):
    """The orchestrator answered a call KAM made for the caller with an error status."""

    reason = "ORCHESTRATOR_REFUSED"
    upstream_code: str = field(metadata={"key": "code"})  # the orchestrator's status code name
    message: str

    def __post_init__(self) -> None:
        super().__init__(self.message)


class BadCredential(Unauthenticated):
    reason = "BAD_CREDENTIAL"


@dataclass(eq=False)
class ApiKeyExpired(Unauthenticated):
    reason = "API_KEY_EXPIRED"
    api_key_id: str
    expire_time: datetime  # UTC

    def __post_init__(self) -> None:
        # Only the key's holder can get this far, so saying why costs nothing.
        super().__init__(f"this API key expired at {self.expire_time.isoformat()}Z")
