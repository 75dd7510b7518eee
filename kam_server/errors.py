"""KAM's domain errors (each maps to one gRPC status in `bitware_core.server`).

MeshError (bitware_core.errors)
├── NotFound
│   └── ClientNotFound, UserNotFound, RequestNotFound, TemplateNotFound, ApiKeyNotFound,
│       WorkerCredentialNotFound, WebhookEndpointNotFound
├── ResourceExhausted
│   ├── BudgetExceeded          (reason BUDGET_EXCEEDED)
│   ├── TierLimitExceeded       (reason TIER_LIMIT_USERS / _REQUESTS)
│   ├── RateLimited             (reason RATE_LIMITED, with a retry delay)
│   ├── LoginThrottled          (reason LOGIN_THROTTLED, with a retry delay)
│   └── WebhookLimit            (reason WEBHOOK_LIMIT)
├── PermissionDenied
│   └── TierNotAllowed          (reason TIER_TEMPLATE / TIER_PRIORITY)
├── FailedPrecondition
│   ├── ClientSuspended         (reason CLIENT_SUSPENDED)
│   ├── TemplateDeprecated      (reason TEMPLATE_DEPRECATED)
│   ├── LastAdmin               (reason LAST_ADMIN)
│   ├── RequestFinished         (reason REQUEST_FINISHED)
│   └── ExecutionMismatch       (reason EXECUTION_MISMATCH)
└── Unauthenticated
    ├── BadCredential           (reason BAD_CREDENTIAL)
    └── ApiKeyExpired           (reason API_KEY_EXPIRED)
"""

from __future__ import annotations

from bitware_core.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)


class ClientNotFound(NotFound):
    reason = "CLIENT_NOT_FOUND"


class UserNotFound(NotFound):
    reason = "USER_NOT_FOUND"


class RequestNotFound(NotFound):
    reason = "REQUEST_NOT_FOUND"


class TemplateNotFound(NotFound):
    reason = "TEMPLATE_NOT_FOUND"


class ApiKeyNotFound(NotFound):
    reason = "API_KEY_NOT_FOUND"


class WorkerCredentialNotFound(NotFound):
    reason = "WORKER_CREDENTIAL_NOT_FOUND"


class WebhookEndpointNotFound(NotFound):
    reason = "WEBHOOK_ENDPOINT_NOT_FOUND"


class BudgetExceeded(ResourceExhausted):
    reason = "BUDGET_EXCEEDED"


class TierLimitExceeded(ResourceExhausted):
    reason = "TIER_LIMIT"


class RateLimited(ResourceExhausted):
    reason = "RATE_LIMITED"


class LoginThrottled(ResourceExhausted):
    reason = "LOGIN_THROTTLED"


class WebhookLimit(ResourceExhausted):
    reason = "WEBHOOK_LIMIT"


class TierNotAllowed(PermissionDenied):
    reason = "TIER_NOT_ALLOWED"


class ClientSuspended(FailedPrecondition):
    reason = "CLIENT_SUSPENDED"


class TemplateDeprecated(FailedPrecondition):
    reason = "TEMPLATE_DEPRECATED"


class LastAdmin(FailedPrecondition):
    reason = "LAST_ADMIN"


class RequestFinished(FailedPrecondition):
    reason = "REQUEST_FINISHED"


class ExecutionMismatch(FailedPrecondition):
    reason = "EXECUTION_MISMATCH"


class BadCredential(Unauthenticated):
    reason = "BAD_CREDENTIAL"


class ApiKeyExpired(Unauthenticated):
    reason = "API_KEY_EXPIRED"
