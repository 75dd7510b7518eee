"""OpenTelemetry traces, opt-in: one trace per request across gateway → KAM → orchestrator →
granulator → model call.

Off unless the `[otel]` extra is installed and `OTEL_TRACES_EXPORTER` names an exporter (`otlp`:
OTLP over gRPC, configured by the standard `OTEL_EXPORTER_OTLP_*` variables; `console`: spans
printed on stderr). `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_BSP_*` and `OTEL_PROPAGATORS` apply as usual; `OTEL_SDK_DISABLED=true` turns it off. When
off, `opentelemetry` is never imported: `span()` is a `nullcontext` and `headers()` is empty.

The context crosses processes as W3C `traceparent` gRPC metadata (`headers()` adds it to every
internal call, `span(parent=…)` reads it), and reaches the orchestrator's asynchronous dispatch
through `Dispatcher.remember_trace`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from bitware_core.config import SettingsError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

#: The tracer when tracing is on (set once per process by `configure`, or by `use` in tests).
_tracer: Tracer | None = None
_EXPORTERS = ("otlp", "console")
Attributes = Mapping[str, str | int | float | bool]


def configure(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Turns tracing on for this process when the environment asks for it (see the module);
    returns whether it is on. SettingsError names what is wrong: an unknown exporter, or an
    exporter without the `[otel]` extra installed."""
    env = os.environ if environ is None else environ
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter in ("", "none") or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if exporter not in _EXPORTERS:
        accepted = ", ".join((*_EXPORTERS, "none"))
        raise SettingsError(f"OTEL_TRACES_EXPORTER={exporter!r} is not accepted: use {accepted}")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER={exporter} needs the otel extra: "
            "pip install 'bitware-mesh[otel]'"
        ) from None
    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    else:  # stderr: stdout carries the ready lines `bitware up` reads
        span_exporter = ConsoleSpanExporter(out=sys.stderr)
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": f"bitware-{service}"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # flushed at exit
    # Not made the global provider: FastAPI (≥ 0.16x) would then add HTTP spans of its own
    # beside the gateway's.
    use(provider)
    return True


def use(provider: TracerProvider | None) -> None:
    """Spans from now on go to `provider`; None turns tracing off. Tests install an in-memory
    exporter this way, for every server of an in-process mesh at once."""
    global _tracer
    _tracer = provider.get_tracer("bitware") if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


def headers() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (`traceparent`, and `tracestate` when set);
    empty when tracing is off."""
    if _tracer is None:
        return ()
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return tuple(carrier.items())


def span(
    name: str,
    kind: str = "internal",
    parent: Mapping[str, str] | None = None,
    attributes: Attributes | None = None,
) -> AbstractContextManager[Span | None]:
    """A span made current for the `with` block: a child of the current one, or of the context
    in `parent` (incoming metadata or headers) when given. `kind`: internal, server, client.
    Exceptions leaving the block are recorded on it. A `nullcontext` (None) when tracing is off."""
    if _tracer is None:
        return contextlib.nullcontext()
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(
        name,
        context=extract(parent) if parent is not None else None,
        kind=SpanKind[kind.upper()],
        attributes=attributes,
    )


def rpc_span(method: str, context: Any) -> AbstractContextManager[Span | None]:
    """The server span of one gRPC call (`/package.Service/Method`; `context` is the call's
    `ServicerContext`), in the trace of the caller's `traceparent` metadata when it sent one."""
    if _tracer is None:
        return contextlib.nullcontext()
    service, _, name = method.lstrip("/").partition("/")
    carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    return span(method.lstrip("/"), "server", carrier, attributes)


def annotate(attributes: Attributes) -> None:
    """Sets attributes on the current span, if tracing is on."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)
