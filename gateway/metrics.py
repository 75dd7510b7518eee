"""The gateway's Prometheus series (`prometheus_client`), on a registry of its own with the
process and GC collectors, served on its HTTP port at `/metrics`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from bitware_core.metrics import BUCKETS, new_registry


class Metrics:
    """The series of one gateway process."""

    def __init__(self) -> None:
        self.registry = new_registry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "bitware_gateway_requests",
            "HTTP requests answered, by route and status.",
            labels,
            registry=self.registry,
        )
        self.seconds = Histogram(
            "bitware_gateway_request_seconds",
            "Time to answer an HTTP request (event streams: until they end), by route and status.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "bitware_gateway_upstream_errors",
            "Failed gRPC calls, by status code.",
            ("code",),
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "bitware_gateway_event_streams",
            "Server-Sent Event streams open now.",
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered HTTP request; `route` is the route template, never the raw path."""
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(method, route, str(status)).observe(seconds)

    def upstream_error(self, code: str) -> None:
        self.upstream_errors.labels(code).inc()
