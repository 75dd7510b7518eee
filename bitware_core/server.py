"""The one server bootstrap every Bitware Mesh server uses.

`MeshServer` builds a `grpc.aio` server with health (per service and overall), reflection, TLS or
mutual TLS by config, keepalive, `so_reuseport` off, and one interceptor that for every call:
takes the request id from metadata (or makes one), authenticates the caller, checks the method's
access table, and maps domain errors (`bitware_core.errors`) to a `google.rpc.Status` with
`ErrorInfo` — the only place errors cross the wire. `stop()` marks health NOT_SERVING first, then
lets in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeAlias
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Histogram

from bitware_core import convert, logs, tracing
from bitware_core.auth import PUBLIC, Authenticator, Credentials, authorise, principal_var
from bitware_core.config import Settings, SettingsError
from bitware_core.context import (
    EXECUTION_ID_HEADER,
    REQUEST_ID_HEADER,
    deadline_var,
    execution_id_var,
    request_id_var,
)
from bitware_core.errors import MeshError, PermissionDenied, Unimplemented
from bitware_core.metrics import BUCKETS, new_registry, serve_metrics, stop_metrics

log = logging.getLogger("bitware.server")

#: What every handler of every server receives beside its request.
Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs

_OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Calls made every few seconds by machines, logged at DEBUG so that INFO stays readable.
_CHATTY = ("/Heartbeat", "/Authenticate")

#: Messages up to 32 MiB (stage outputs may be up to 16 MiB; see orchestrator_server.payloads).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
KEEPALIVE_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class Service:
    """One gRPC service of a server: its descriptor, how to add it, and who may call each RPC
    (method name → caller tags; an empty set means no credential is needed). Every RPC of the
    service must be in the table, so a new RPC cannot be added without deciding who may call it."""

    descriptor: ServiceDescriptor
    register: Callable[[grpc.aio.Server], None]
    access: Mapping[str, frozenset[str]]

    @property
    def name(self) -> str:
        return str(self.descriptor.full_name)

    def __post_init__(self) -> None:
        methods = {m.name for m in self.descriptor.methods}
        if set(self.access) != methods:
            raise ValueError(
                f"access table of {self.name} must list exactly its RPCs; "
                f"missing {sorted(methods - set(self.access))}, "
                f"unknown {sorted(set(self.access) - methods)}"
            )


def status_for(error: MeshError, domain: str) -> grpc.Status:
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    ]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if error.retry_after is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=convert.duration(error.retry_after)))
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code), message=error.message, details=packed
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


class _MeshInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        access: Mapping[str, frozenset[str]],
        domain: str,
        metrics: CollectorRegistry,
    ) -> None:
        self._authenticator = authenticator
        self._access = access
        self._domain = domain
        #: method → its handler wrapped in the checks below
        self._wrapped: dict[str, Handler] = {}
        self._calls = Counter(
            "bitware_rpc",
            "RPCs served, by method and status code.",
            ("method", "code"),
            registry=metrics,
        )
        self._seconds = Histogram(
            "bitware_rpc_seconds",
            "Time to serve an RPC (streams: until they end), by method and status code.",
            ("method", "code"),
            buckets=BUCKETS,
            registry=metrics,
        )
        self._stream_messages = Counter(
            "bitware_rpc_stream_messages",
            "Messages sent on server streams, by method.",
            ("method",),
            registry=metrics,
        )

    def _record(self, method: str, code: str, started: float) -> None:
        seconds = time.monotonic() - started
        self._calls.labels(method, code).inc()
        self._seconds.labels(method, code).observe(seconds)
        if tracing.enabled():
            tracing.annotate({"rpc.grpc.status_code": grpc.StatusCode[code].value[0]})
        level = logging.DEBUG if method.endswith(_CHATTY) else logging.INFO
        log.log(
            level,
            "rpc",
            extra={
                "server": self._domain,
                "method": method,
                "code": code,
                "ms": round(seconds * 1000, 1),
            },
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:  # built once per method, not per call
            wrapped = self._wrap(method, await continuation(handler_call_details))
            if wrapped is not None:  # unknown names are not kept: callers may send any
                self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Handler | None) -> Handler | None:
        if handler is None or method.startswith(_OPEN_SERVICES):
            return handler
        allowed = self._access.get(method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, allowed, handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, allowed, handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client- or bidi-streaming RPCs in the mesh

    async def _enter(self, method: str, allowed: frozenset[str] | None, context: Context) -> None:
        metadata = tuple(context.invocation_metadata() or ())
        values = {k: v for k, v in metadata if isinstance(v, str)}
        request_id_var.set(values.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16])
        execution_id_var.set(values.get(EXECUTION_ID_HEADER, ""))
        remaining = context.time_remaining()
        deadline_var.set(time.monotonic() + remaining if remaining is not None else None)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
        if allowed is None:
            raise PermissionDenied(f"{method} is not open to any caller")
        if allowed == PUBLIC:
            return
        principal = await self._authenticator.authenticate(Credentials.from_metadata(metadata))
        authorise(principal, allowed, method)
        principal_var.set(principal)

    async def _fail(
        self, method: str, error: BaseException, context: Context, started: float
    ) -> NoReturn:
        if isinstance(error, NotImplementedError):  # a generated servicer's default method
            error = Unimplemented(f"{method} is not implemented by this server")
        elif not isinstance(error, MeshError):
            log.exception("unhandled error", extra={"method": method}, exc_info=error)
            error = MeshError("internal error; the server logged the details")
        elif error.code == "INTERNAL":
            log.error("internal error", extra={"method": method, "reason": error.reason})
        self._record(method, error.code, started)
        await context.abort_with_status(status_for(error, self._domain))

    def _wrap_unary(
        self,
        method: str,
        allowed: frozenset[str] | None,
        inner: Callable[[Any, Context], Awaitable[Any]],
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def behaviour(request: Any, context: Context) -> Any:
            started = time.monotonic()
            with tracing.rpc_span(method, context):
                try:
                    await self._enter(method, allowed, context)
                    response = await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as error:  # every failure leaves as a status, never UNKNOWN
                    await self._fail(method, error, context, started)
                self._record(method, "OK", started)
                return response

        return behaviour

    def _wrap_stream(
        self,
        method: str,
        allowed: frozenset[str] | None,
        inner: Callable[[Any, Context], AsyncIterator[Any]],
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.monotonic()
            with tracing.rpc_span(method, context):
                try:
                    await self._enter(method, allowed, context)
                    sent = self._stream_messages.labels(method)
                    async for item in inner(request, context):
                        sent.inc()
                        yield item
                except asyncio.CancelledError:
                    self._record(method, "CANCELLED", started)
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._fail(method, error, context, started)
                self._record(method, "OK", started)

        return behaviour


def read_pem(variable: str, path: str) -> bytes:
    """The PEM file a TLS setting names; SettingsError naming the setting when it cannot be
    read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(f"{variable}={path}: cannot read it: {error.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; mutual TLS when a CA is configured too."""
    if not settings.tls.enabled:
        return None
    ca = read_pem("BITWARE_TLS_CA", settings.tls.ca) if settings.tls.ca else None
    return grpc.ssl_server_credentials(
        [
            (
                read_pem("BITWARE_TLS_KEY", settings.tls.key),
                read_pem("BITWARE_TLS_CERT", settings.tls.cert),
            )
        ],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class ListenError(OSError):
    """A server (or its metrics endpoint) could not bind its address."""


def ready_line(service: str, address: str, metrics_address: str = "") -> str:
    """`BITWARE_READY <service> <host:port> [metrics=<host:port>]`, printed once a server
    listens: the bound addresses (port 0 becomes the port chosen), which `bitware up` reads.
    Under `bitware up` (`ServerSettings.stdin_settings`) a gRPC server first prints
    `BITWARE_BOUND <service> <host:port>` as soon as its port is bound, before its start-up work,
    so that the servers started after it need not wait for that work."""
    line = f"BITWARE_READY {service} {address}"
    return f"{line} metrics={metrics_address}" if metrics_address else line


class MeshServer:
    """A started gRPC server with health and reflection. Use `start()`, then `stop()`."""

    def __init__(
        self,
        settings: Settings,
        services: list[Service],
        authenticator: Authenticator,
        domain: str,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.services = services
        access = {
            f"/{service.name}/{method}": tags
            for service in services
            for method, tags in service.access.items()
        }
        #: This server's series (`bitware_core.metrics`), served at /metrics when configured.
        self.metrics = metrics or new_registry()
        self._metrics_server: WSGIServer | None = None
        self.server = grpc.aio.server(
            interceptors=[_MeshInterceptor(authenticator, access, domain, self.metrics)],
            options=[("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS],
        )
        self.health = health.aio.HealthServicer()
        self.port = 0
        #: Where /metrics is served once started (the bound port, when 0 was asked); empty = not.
        self.metrics_address = ""

    @property
    def address(self) -> str:
        return f"{self.settings.server.host}:{self.port}"

    def bind(self) -> int:
        """Binds the server's address (once; `start` does it if not done yet) and returns the
        port: a caller can learn the port of a server whose start-up work is still under way.
        Calls that arrive before `start` wait for it."""
        if self.port:
            return self.port
        bind = f"{self.settings.server.host}:{self.settings.server.port}"
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(bind)
            else:
                self.port = self.server.add_secure_port(bind, credentials)
        except RuntimeError:  # grpc says only "Failed to bind to address"
            raise ListenError(
                f"cannot listen on {bind}: the port is in use or the host is not an address of "
                "this machine"
            ) from None
        return self.port

    async def start(self) -> int:
        for service in self.services:
            service.register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.bind()
        await self.server.start()
        if metrics_address := self.settings.observability.metrics_address:
            try:
                self._metrics_server = await serve_metrics(self.metrics, metrics_address)
            except OSError as error:
                raise ListenError(
                    f"cannot serve metrics on {metrics_address}: {error.strerror}"
                ) from None
            host, port = self._metrics_server.server_address[:2]
            self.metrics_address = f"{host!s}:{port}"
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def reconfigure(self, name: str, value: str) -> bool:
        """Applies setting `name` (`BITWARE_…`) while running, if this server can; see
        `ServerSettings.stdin_settings`. None can by default."""
        return False

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        if self._metrics_server is not None:
            await stop_metrics(self._metrics_server)
        grace = self.settings.server.shutdown_grace if grace is None else grace
        try:
            # grpc.aio's stop can, rarely, wait past its grace for a call it already cancelled.
            await asyncio.wait_for(self.server.stop(grace), grace + 5.0)
        except TimeoutError:
            log.warning("server did not stop within its grace period", extra={"grace": grace})


async def run_until_signal(server: MeshServer, service: str) -> None:
    """Prints the ready line (`ready_line`), then serves until SIGTERM or SIGINT, and shuts down
    gracefully (health NOT_SERVING first)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(ready_line(service, server.address, server.metrics_address), flush=True)
    log.info(
        "serving", extra={"address": server.address, "metrics": server.metrics_address or None}
    )
    if server.settings.server.stdin_settings:
        threading.Thread(target=_follow_stdin, args=(server, loop), daemon=True).start()
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def _follow_stdin(server: MeshServer, loop: asyncio.AbstractEventLoop) -> None:
    """Applies `BITWARE_NAME=value` lines arriving on stdin while the server runs (on the loop),
    answering `BITWARE_CONFIGURED NAME` on stdout for each one applied."""

    def apply(name: str, value: str) -> None:
        if server.reconfigure(name, value):
            log.info("setting changed", extra={"setting": name})
            print(f"BITWARE_CONFIGURED {name}", flush=True)
        else:
            log.warning("this setting cannot change while running", extra={"setting": name})

    for line in iter(sys.stdin.readline, ""):
        name, _, value = line.strip().partition("=")
        if name:
            loop.call_soon_threadsafe(apply, name, value)


def process_settings(service: str) -> Settings:
    """This process's settings: the environment, then, with BITWARE_STDIN_SETTINGS, the
    `BITWARE_NAME=value` lines on stdin up to an empty line; and tracing when the `OTEL_*`
    variables ask for it (`bitware_core.tracing`). A bad value is one line on stderr and exit
    code 2."""
    try:
        tracing.configure(service)
        settings = Settings.from_env()
        if settings.server.stdin_settings:
            environ = dict(os.environ)
            for line in iter(sys.stdin.readline, ""):
                name, _, value = line.strip().partition("=")
                if not name:
                    break
                environ[name] = value
            settings = Settings.from_env(environ)
    except SettingsError as error:
        print(f"{service}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return settings


def run_process(service: str, build: Callable[[Settings], MeshServer]) -> None:
    """The whole life of a server process (`python -m <server>`, `bitware serve <server>`):
    settings (`process_settings`), logs to stderr, start, the ready line, serve until SIGTERM or
    SIGINT, stop gracefully. A bad setting or an address it cannot bind is one line on stderr
    and exit code 2."""
    settings = process_settings(service)
    logs.configure(
        service, as_json=settings.observability.log_json, level=settings.observability.log_level
    )

    async def run() -> None:
        try:
            server = build(settings)
        except SettingsError as error:  # a setting only the server itself can judge
            print(f"{service}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        try:
            server.bind()
            if settings.server.stdin_settings:  # `bitware up` hands the address on early
                print(f"BITWARE_BOUND {service} {server.address}", flush=True)
            await server.start()
        except (ListenError, SettingsError) as error:
            print(f"{service}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        await run_until_signal(server, service)

    asyncio.run(run())
