"""From an HTTP request to a gRPC call and back: the caller's credentials and request id become
gRPC metadata, every call gets a deadline, and protobuf answers become JSON.

The gateway never decides who may do what: it passes on whatever credential the caller sent, and
the servers answer UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import grpc
from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import (
    APIKeyCookie,
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBearer,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from bitware_core import tracing
from bitware_core.auth import API_KEY_HEADER, AUTHORIZATION_HEADER, SESSION_HEADER, WORKER_ID_HEADER
from bitware_core.context import REQUEST_ID_HEADER, request_id_var
from gateway.errors import InvalidInput, UpstreamsNotConnected
from gateway.upstream import Upstream

if TYPE_CHECKING:  # the async stub type exists only in the generated type stubs
    from bitware.granulator.v1.granulator_pb2_grpc import GranulatorServiceAsyncStub

Req = TypeVar("Req")
Resp = TypeVar("Resp")
# Generic only so that `reply(await call(...))` infers the answer type from the stub.
M = TypeVar("M", bound=Message)

#: The cookie login sets; it carries the session token for the browser dashboard.
SESSION_COOKIE = "bitware_session"

_api_key = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", description="A client program's key.", auto_error=False
)
_session = APIKeyHeader(
    name=SESSION_HEADER,
    scheme_name="Session",
    description="A dashboard session token from POST /api/auth/login.",
    auto_error=False,
)
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="SessionCookie",
    description="Set by POST /api/auth/login (HttpOnly).",
    auto_error=False,
)
_bearer = HTTPBearer(
    scheme_name="WorkerToken",
    description="A worker's or service's token; send X-Worker-ID with it.",
    auto_error=False,
)
_worker_id = APIKeyHeader(
    name="X-Worker-ID",
    scheme_name="WorkerId",
    description="The worker or service id that goes with a bearer token.",
    auto_error=False,
)

_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


def _checked(header: str, value: str) -> str:
    # gRPC metadata values must be printable ASCII; refuse here rather than fail inside grpc.
    if not set(value) <= _PRINTABLE:
        raise InvalidInput(f"header {header}", "must be printable ASCII")
    return value.strip()


def credential_metadata(
    api_key: Annotated[str | None, Security(_api_key)],
    session: Annotated[str | None, Security(_session)],
    cookie: Annotated[str | None, Security(_cookie)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    worker_id: Annotated[str | None, Security(_worker_id)],
) -> tuple[tuple[str, str], ...]:
    """The caller's credential as gRPC metadata; the session header wins over the cookie."""
    metadata: list[tuple[str, str]] = []
    if api_key:
        metadata.append((API_KEY_HEADER, _checked("X-API-Key", api_key)))
    if session or cookie:
        token = session or cookie or ""
        metadata.append((SESSION_HEADER, _checked("x-bitware-session-token", token)))
    if bearer is not None:
        token = _checked("Authorization", bearer.credentials)
        metadata.append((AUTHORIZATION_HEADER, f"Bearer {token}"))
    if worker_id:
        metadata.append((WORKER_ID_HEADER, _checked("X-Worker-ID", worker_id)))
    return tuple(metadata)


class Call:
    """What a route needs to call upstream as its caller: the stubs, the metadata, a deadline."""

    def __init__(
        self, upstream: Upstream, metadata: tuple[tuple[str, str], ...], timeout: float
    ) -> None:
        self.up = upstream
        self.metadata = (*metadata, (REQUEST_ID_HEADER, request_id_var.get()), *tracing.headers())
        self.timeout = timeout

    async def __call__(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        return await method(request, metadata=self.metadata, timeout=self.timeout)

    async def granulator(
        self,
        method: Callable[[GranulatorServiceAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
    ) -> Resp:
        """Calls `method` of whichever granulator is reachable (they share one job store)."""

        async def invoke(stub: GranulatorServiceAsyncStub, seconds: float) -> Resp:
            return await method(stub)(request, metadata=self.metadata, timeout=seconds)

        return await self.up.granulators.call(invoke, self.timeout)

    def stream(
        self, method: grpc.aio.UnaryStreamMultiCallable[Req, Resp], request: Req, timeout: float
    ) -> grpc.aio.UnaryStreamCall[Req, Resp]:
        return method(request, metadata=self.metadata, timeout=timeout)


def upstream_of(request: Request) -> Upstream:
    upstream = getattr(request.app.state, "upstream", None)
    if upstream is None:
        raise UpstreamsNotConnected()
    return cast(Upstream, upstream)


def _call(
    request: Request,
    metadata: Annotated[tuple[tuple[str, str], ...], Depends(credential_metadata)],
) -> Call:
    return Call(upstream_of(request), metadata, request.app.state.settings.peers.rpc_timeout)


#: The dependency every upstream-calling route takes.
CallDep = Annotated[Call, Depends(_call)]


def message_json(message: Message) -> dict[str, Any]:
    """Protobuf → JSON as the API documents it: proto field names, enum names, and every scalar
    field present even when it has its default value (so the shape does not change)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def reply(message: M, status_code: int = 200) -> JSONResponse:
    return JSONResponse(message_json(message), status_code=status_code)


# Enum classes from mypy-protobuf share no common base type, hence `Any` for `enum`.
def enum_value(enum: Any, prefix: str, value: str | None) -> Any:
    """`course` → STRUCTURE_TYPE_COURSE; None → the UNSPECIFIED value 0."""
    return enum.Value(f"{prefix}{value.upper()}") if value else 0
