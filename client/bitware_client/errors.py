"""Errors a call can raise: one class per gRPC status, each carrying the `google.rpc` details.

Hierarchy::

    BitwareError                 (any status; `code` says which)
    ├── InvalidArgument          (INVALID_ARGUMENT; `field_violations` says which fields)
    ├── Unauthenticated          (UNAUTHENTICATED)
    ├── PermissionDenied         (PERMISSION_DENIED)
    ├── NotFound                 (NOT_FOUND)
    ├── AlreadyExists            (ALREADY_EXISTS)
    ├── FailedPrecondition       (FAILED_PRECONDITION)
    ├── ResourceExhausted        (RESOURCE_EXHAUSTED; `retry_after` when the server said)
    ├── Unavailable              (UNAVAILABLE; raised once the retries are spent)
    ├── DeadlineExceeded         (DEADLINE_EXCEEDED)
    └── Cancelled                (CANCELLED)

Every error has the server's `reason` (`google.rpc.ErrorInfo.reason`, for example
`BUDGET_EXCEEDED`), its `domain` (the service) and `metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer that carries a `google.rpc.Status` with the details.
_DETAILS_TRAILER = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (`google.rpc.BadRequest.FieldViolation`)."""

    field: str
    description: str


class BitwareError(Exception):
    """A call that failed with a gRPC status other than OK."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.field_violations = field_violations
        self.retry_after = retry_after


class InvalidArgument(BitwareError):
    """The request was malformed; `field_violations` names each bad field."""


class Unauthenticated(BitwareError):
    """No credential, or one the mesh does not accept."""


class PermissionDenied(BitwareError):
    """The credential may not do this."""


class NotFound(BitwareError):
    """No such object (or not one the caller may see)."""


class AlreadyExists(BitwareError):
    """The object exists already."""


class FailedPrecondition(BitwareError):
    """The object is not in a state that allows this; `reason` says why."""


class ResourceExhausted(BitwareError):
    """A budget, tier limit or rate limit; `retry_after` says when to try again, if it helps."""


class Unavailable(BitwareError):
    """The server could not be reached (after the client's retries)."""


class DeadlineExceeded(BitwareError):
    """The call's deadline passed."""


class Cancelled(BitwareError):
    """The call was cancelled."""


_CLASSES: dict[grpc.StatusCode, type[BitwareError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> BitwareError:
    """The typed error for a failed call, with the details decoded from its trailers."""
    code = error.code()
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for key, value in error.trailing_metadata() or ():
        if key != _DETAILS_TRAILER or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return _CLASSES.get(code, BitwareError)(
        code,
        error.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_after=retry_after,
    )
