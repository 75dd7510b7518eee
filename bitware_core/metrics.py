"""Prometheus metrics through `prometheus_client`: one registry per server, with the process
(CPU, RSS, open files), Python GC and platform collectors on every one, a gauge read from a
callback when scraped, and the HTTP endpoint that serves a registry at `/metrics` when
`BITWARE_METRICS_ADDRESS` is set.

Series names follow Prometheus conventions: counters end in `_total`, durations are histograms in
`_seconds`. Each server declares its own series where they are measured; the full list is in
README's Metrics section."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

LabelValues = tuple[str, ...]
#: Seconds; fine at the low end, where dispatch and RPC latencies live.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def new_registry() -> CollectorRegistry:
    """A registry with the process, GC and platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class CallbackGauge(Collector):
    """A gauge whose values are read when scraped, from a callback returning
    {label values: value} (figures a server already keeps, such as a queue snapshot)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], dict[LabelValues, float]],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in sorted(self.read().items()):
            family.add_metric(list(values), value)
        yield family


async def serve_metrics(registry: CollectorRegistry, address: str) -> WSGIServer:
    """Serves the registry on host:port (prometheus_client's HTTP server, in a thread of its
    own; `/metrics` and gzip and OpenMetrics by the scraper's Accept headers). OSError when the
    address cannot be bound."""
    host, _, port = address.rpartition(":")
    server, _ = await asyncio.to_thread(start_http_server, int(port), host or "127.0.0.1", registry)
    return server


async def stop_metrics(server: WSGIServer) -> None:
    """Stops a `serve_metrics` server (its loop notices within half a second)."""
    await asyncio.to_thread(server.shutdown)
    server.server_close()
