"""How a failure reaches an HTTP client: one table from gRPC status codes to HTTP statuses, and
one JSON body for every error the gateway answers, whoever raised it::

    {"error": {"code": "NOT_FOUND", "message": "...", "reason": "<ErrorInfo.reason>",
               "metadata": {"request_id": "..."},
               "field_violations": [{"field": "...", "description": "..."}]}}

`code` is the gRPC status name (`INVALID_ARGUMENT` for the gateway's own input checks, the HTTP
status name for routing errors such as `METHOD_NOT_ALLOWED`); every key is always present.
Details come from the `google.rpc.Status` the servers put in `grpc-status-details-bin`:
`ErrorInfo` gives `reason` and `metadata` (the error's fields: ids, limits), `BadRequest` the
field violations, `RetryInfo` the `Retry-After`.

The gateway's own errors (its reason and metadata are empty)::

    GatewayError
    ├── InvalidInput              400 INVALID_ARGUMENT: a header or resume position, as a
    │                               field violation
    └── UpstreamsNotConnected     503 UNAVAILABLE: the lifespan has not opened the channels
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, cast

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from bitware_core import convert

log = logging.getLogger("bitware.gateway")

#: The one table. A code that is not here answers 502: the upstream failed in a way the caller
#: cannot fix by changing the request.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
UNMAPPED_STATUS = 502

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class FieldViolationBody(BaseModel):
    """One bad field of a request."""

    field: str
    description: str


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str
    message: str
    reason: str = ""
    metadata: dict[str, str] = Field(
        default={}, description="The error's fields (ids, limits), from `ErrorInfo.metadata`."
    )
    field_violations: list[FieldViolationBody] = []


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class GatewayError(Exception):
    """An error the gateway itself answers; each subclass names its gRPC status code, which the
    one table turns into the HTTP status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message, self.violations = message, violations

    @property
    def status(self) -> int:
        return http_status(self.code)


class InvalidInput(GatewayError):
    """A header or query value the gateway checks itself, before any upstream sees it."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}", [(field, description)])
        self.field, self.description = field, description


class UpstreamsNotConnected(GatewayError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("the gateway has not connected to its upstreams")


def error_body(
    code: str,
    message: str,
    reason: str = "",
    violations: Iterable[tuple[str, str]] = (),
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "reason": reason,
            "metadata": dict(metadata or {}),
            "field_violations": [{"field": f, "description": d} for f, d in violations],
        }
    }


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, UNMAPPED_STATUS)


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a server attached to a failed call, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return cast(status_pb2.Status, status_pb2.Status.FromString(value))
            except DecodeError:  # a malformed trailer must not hide the status code itself
                log.warning("undecodable grpc-status-details-bin trailer")
                return None
    return None


def rpc_error(error: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers for a failed gRPC call."""
    code = error.code()
    status = http_status(code)
    message = error.details() or code.name
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    details = status_details(error)
    for packed in details.details if details is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            seconds = convert.seconds(retry.retry_delay)
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    if status == UNMAPPED_STATUS:
        message = f"upstream failed with {code.name}: {message}"
    return status, error_body(code.name, message, reason, violations, metadata), headers


async def _on_rpc_error(request: Request, exc: Exception) -> JSONResponse:
    error = cast(grpc.aio.AioRpcError, exc)
    request.app.state.metrics.upstream_error(error.code().name)
    status, body, headers = rpc_error(error)
    if status >= 500:
        log.warning("upstream error", extra={"code": error.code().name, "details": error.details()})
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_gateway_error(request: Request, exc: Exception) -> JSONResponse:
    error = cast(GatewayError, exc)
    body = error_body(error.code.name, error.message, violations=error.violations)
    return JSONResponse(body, status_code=error.status)


def _field(loc: Sequence[Any]) -> str:
    # ("body", "spec", 0) → "body.spec[0]"; FastAPI puts the source first.
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = cast(RequestValidationError, exc).errors()
    violations = []
    for item in errors:
        description = str(item.get("msg", "is not valid"))
        if item.get("type") == "json_invalid":
            detail = (item.get("ctx") or {}).get("error", "")
            description = f"is not valid JSON ({detail})" if detail else "is not valid JSON"
            violations.append(("body", description))
            continue
        violations.append((_field(item.get("loc", ())), description))
    message = "; ".join(f"{f}: {d}" for f, d in violations) or "the request is not valid"
    return JSONResponse(error_body("INVALID_ARGUMENT", message, violations=violations), 422)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    error = cast(HTTPException, exc)
    code = HTTPStatus(error.status_code).name
    return JSONResponse(
        error_body(code, str(error.detail)), status_code=error.status_code, headers=error.headers
    )


def install(app: FastAPI) -> None:
    """Makes every error the app answers use the one body shape."""
    app.add_exception_handler(grpc.aio.AioRpcError, _on_rpc_error)
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)


#: What every API route may answer besides success, for OpenAPI.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "INVALID_ARGUMENT, with field violations"),
        (401, "UNAUTHENTICATED: no valid credential"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (409, "ALREADY_EXISTS or FAILED_PRECONDITION"),
        (422, "INVALID_ARGUMENT: the request does not have the documented shape"),
        (429, "RESOURCE_EXHAUSTED; Retry-After says when to try again"),
        (501, "UNIMPLEMENTED upstream"),
        (502, "the upstream failed with another status"),
        (503, "UNAVAILABLE: an upstream server cannot be reached"),
        (504, "DEADLINE_EXCEEDED"),
    ]
}
