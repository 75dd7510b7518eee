"""Domain errors that cross the wire exactly once, as a `google.rpc.Status` with `ErrorInfo`.

Hierarchy (each server's own `errors.py` adds specific subclasses)::

    MeshError                        (INTERNAL)
    ├── InvalidArgument              (INVALID_ARGUMENT, with field violations)
    ├── Unauthenticated              (UNAUTHENTICATED)
    ├── PermissionDenied             (PERMISSION_DENIED)
    ├── NotFound                     (NOT_FOUND)
    ├── AlreadyExists                (ALREADY_EXISTS)
    ├── FailedPrecondition           (FAILED_PRECONDITION)
    ├── ResourceExhausted            (RESOURCE_EXHAUSTED, with a retry delay)
    ├── Unavailable                  (UNAVAILABLE)
    ├── Cancelled                    (CANCELLED)
    ├── DataLoss                     (DATA_LOSS)
    └── Unimplemented                (UNIMPLEMENTED)

The logic raises these; `bitware_core.server` maps them to a status. This module does not import
grpc: the code is a plain name that the server looks up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as in `google.rpc.BadRequest`."""

    field: str
    description: str


class MeshError(Exception):
    """Base of every error that is meant to reach a caller."""

    code = "INTERNAL"
    reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or []
        self.retry_after = retry_after


class InvalidArgument(MeshError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], message: str = "") -> None:
        summary = message or "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(summary, violations=violations)


class Unauthenticated(MeshError):
    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(MeshError):
    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class NotFound(MeshError):
    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(MeshError):
    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class FailedPrecondition(MeshError):
    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(MeshError):
    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(MeshError):
    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class Cancelled(MeshError):
    code = "CANCELLED"
    reason = "CANCELLED"


class DataLoss(MeshError):
    code = "DATA_LOSS"
    reason = "DATA_LOSS"


class Unimplemented(MeshError):
    code = "UNIMPLEMENTED"
    reason = "UNIMPLEMENTED"


class Violations:
    """Collects field violations and raises them together, so a caller sees every problem."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self, condition: bool, field: str, description: str) -> None:
        if not condition:
            self.add(field, description)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
