"""Long-lived client channels between services, and the metadata every internal call carries
(credential, request and execution ids, and the trace context when tracing is on).

One channel per target per process, created at start-up. Every call has a deadline: inside a
server, `bitware_core.context.timeout()` passes on the time the caller has left (capped by the
configured timeout).
"""

from __future__ import annotations

from typing import Any

import grpc

from bitware_core import tracing
from bitware_core.auth import AUTHORIZATION_HEADER, WORKER_ID_HEADER
from bitware_core.config import Settings
from bitware_core.context import (
    EXECUTION_ID_HEADER,
    REQUEST_ID_HEADER,
    execution_id_var,
    request_id_var,
)
from bitware_core.server import KEEPALIVE_OPTIONS, read_pem


def open_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to `target`, over TLS (mutual when this process has a certificate) when a CA is
    configured, plaintext otherwise.

    `target` is `host:port` or any gRPC name, such as `dns:///kam.internal:50051`: calls are
    spread round robin over every address the name resolves to (replicas behind one name, e.g.
    a Kubernetes headless Service), and an address that stops answering is skipped."""
    options: list[tuple[str, Any]] = [
        *KEEPALIVE_OPTIONS,
        ("grpc.enable_retries", 1),
        ("grpc.lb_policy_name", "round_robin"),
        # Peers are near: after a refused connection (a server still starting, or restarting),
        # try again soon rather than after gRPC's default 1 s growing to 2 min.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if not settings.tls.ca:
        return grpc.aio.insecure_channel(target, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem("BITWARE_TLS_CA", settings.tls.ca),
        private_key=read_pem("BITWARE_TLS_KEY", settings.tls.key) if settings.tls.key else None,
        certificate_chain=(
            read_pem("BITWARE_TLS_CERT", settings.tls.cert) if settings.tls.cert else None
        ),
    )
    return grpc.aio.secure_channel(target, credentials, options=options)


def service_metadata(settings: Settings) -> tuple[tuple[str, str], ...]:
    """This process's own credential plus the ids of the request being served."""
    metadata = [
        (AUTHORIZATION_HEADER, f"Bearer {settings.auth.worker_token}"),
        (WORKER_ID_HEADER, settings.auth.worker_id),
    ]
    if request_id := request_id_var.get():
        metadata.append((REQUEST_ID_HEADER, request_id))
    if execution_id := execution_id_var.get():
        metadata.append((EXECUTION_ID_HEADER, execution_id))
    metadata.extend(tracing.headers())  # traceparent, when tracing is on
    return tuple(metadata)
