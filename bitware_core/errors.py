"""Domain errors that cross the wire exactly once, as a `google.rpc.Status` with `ErrorInfo`.

Hierarchy (each server's own `errors.py` adds specific subclasses)::

    MeshError                        (INTERNAL)
    ├── InvalidArgument              (INVALID_ARGUMENT, with field violations)
    ├── Unauthenticated              (UNAUTHENTICATED)
    ├── PermissionDenied             (PERMISSION_DENIED)
    │   └── ApiKeyScopeMissing       (API_KEY_SCOPE: required_scope, method, scopes)
    ├── NotFound                     (NOT_FOUND)
    │   └── ClientNotFound           (CLIENT_NOT_FOUND: client_id)
    ├── AlreadyExists                (ALREADY_EXISTS)
    ├── FailedPrecondition           (FAILED_PRECONDITION)
    ├── ResourceExhausted            (RESOURCE_EXHAUSTED, with a retry delay)
    ├── Unavailable                  (UNAVAILABLE)
    ├── Cancelled                    (CANCELLED)
    ├── DataLoss                     (DATA_LOSS)
    └── Unimplemented                (UNIMPLEMENTED)

An error's reason is its class's (never given at the raise): one class per reason. An error with
something a caller can act on (an id, a limit) is a dataclass whose fields say so, e.g.
`ClientNotFound(client_id)`; `bitware_core.server` sends every field but `message`,
`violations` and `retry_after` (which have their own details) as `ErrorInfo.metadata`, as text
(see `metadata_text`), leaving out fields that are None. The logic raises these; this module
does not import grpc: the code is a plain name that the server looks up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

#: MeshError's own attributes: they reach the caller as the status message, `BadRequest` and
#: `RetryInfo`, so a subclass that declares them as fields does not repeat them as metadata.
NOT_METADATA = frozenset({"message", "violations", "retry_after"})


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as in `google.rpc.BadRequest`."""

    field: str
    description: str


def metadata_text(value: object, spec: str = "") -> str:
    """A field's value as `ErrorInfo.metadata` text: booleans as `true`/`false`, sequences
    comma-separated, times in ISO 8601 (naive ones are UTC), floats with `:g` unless the field
    names a format (`field(metadata={"format": ".4f"})`), the rest as `str()`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, (tuple, list, frozenset)):
        return ",".join(metadata_text(item, spec) for item in value)
    if spec or isinstance(value, float):
        return format(value, spec or "g")
    return str(value)


class MeshError(Exception):
    """Base of every error that is meant to reach a caller."""

    code: ClassVar[str] = "INTERNAL"
    reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations or [])
        self.retry_after = retry_after

    @property
    def metadata(self) -> dict[str, str]:
        """`ErrorInfo.metadata`: the error's dataclass fields as text (see the module doc). A
        field's `metadata` may name a `format` for its value and a `key` other than its name
        (for a name the class cannot use, such as `code`)."""
        if not dataclasses.is_dataclass(self):
            return {}
        found: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name not in NOT_METADATA and value is not None:
                key = field.metadata.get("key") or field.name
                found[key] = metadata_text(value, field.metadata.get("format", ""))
        return found


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


@dataclass(eq=False)
class ApiKeyScopeMissing(PermissionDenied):
    """An API key without the scope (`read`, `write`) the method needs."""

    reason = "API_KEY_SCOPE"
    required_scope: str
    method: str
    scopes: tuple[str, ...]  # the key's

    def __post_init__(self) -> None:
        super().__init__(
            f"this API key's scopes ({', '.join(self.scopes) or 'none'}) do not include "
            f"{self.required_scope!r}, which {self.method} needs"
        )


class NotFound(MeshError):
    code = "NOT_FOUND"
    reason = "NOT_FOUND"


@dataclass(eq=False)
class ClientNotFound(NotFound):
    """Also the answer to a client naming another client (never a hint that it exists)."""

    reason = "CLIENT_NOT_FOUND"
    client_id: str

    def __post_init__(self) -> None:
        super().__init__(f"client {self.client_id!r} not found")


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
