"""Prometheus metrics in the text exposition format, kept in memory and written by hand (a few
counters, gauges and histograms do not justify a client library), plus the tiny HTTP endpoint
that serves them at `/metrics` when `BITWARE_METRICS_ADDRESS` is set."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable

log = logging.getLogger("bitware.metrics")

LabelValues = tuple[str, ...]
#: Seconds; fine at the low end, where dispatch and RPC latencies live.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Iterable[str], values: Iterable[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: defaultdict[LabelValues, float] = defaultdict(float)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] += amount

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, k)} {v:g}"
            for k, v in sorted(self.values.items())
        ]


class Gauge(_Metric):
    """A value read when scraped, from a callback returning {label values: value}."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...] = (),
        read: Callable[[], dict[LabelValues, float]] | None = None,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.read = read or dict

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.label_names, k)} {v:g}"
            for k, v in sorted(self.read().items())
        ]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = buckets
        self.counts: dict[LabelValues, list[int]] = {}
        self.sums: defaultdict[LabelValues, float] = defaultdict(float)

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def samples(self) -> list[str]:
        lines = []
        for key, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip([*self.buckets, float("inf")], counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                labels = _labels(self.label_names, key, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{labels} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def histogram(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Histogram:
        metric = Histogram(name, help_text, labels)
        self.metrics.append(metric)
        return metric

    def gauge(
        self,
        name: str,
        help_text: str,
        labels: tuple[str, ...],
        read: Callable[[], dict[LabelValues, float]],
    ) -> Gauge:
        metric = Gauge(name, help_text, labels, read)
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            lines += metric.header() + metric.samples()
        return "\n".join(lines) + "\n"


async def serve_metrics(registry: Registry, address: str) -> asyncio.Server:
    """Serves `GET /metrics` on host:port (plain HTTP/1.1, one response per connection)."""
    host, _, port = address.rpartition(":")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b""
            if path == b"/metrics":
                body, status = registry.render().encode(), b"200 OK"
            else:
                body, status = b"only /metrics is served here\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError) as error:
            log.debug("metrics request dropped", extra={"error": str(error)})
        finally:
            writer.close()

    return await asyncio.start_server(answer, host or "127.0.0.1", int(port))
