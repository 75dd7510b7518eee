"""The gateway's few Prometheus metrics, kept in memory and written in the text exposition
format by hand (four series do not justify a client library)."""

from __future__ import annotations

from collections import Counter, defaultdict


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{key}="{escape(value)}"' for key, value in labels.items())


class Metrics:
    """Counters for one gateway process."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.seconds: defaultdict[tuple[str, str], float] = defaultdict(float)
        self.upstream_errors: Counter[str] = Counter()
        self.open_streams = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered HTTP request; `route` is the route template, never the raw path."""
        self.requests[(method, route, str(status))] += 1
        self.seconds[(method, route)] += seconds

    def upstream_error(self, code: str) -> None:
        self.upstream_errors[code] += 1

    def render(self) -> str:
        lines = [
            "# HELP bitware_gateway_requests_total HTTP requests answered, by route and status.",
            "# TYPE bitware_gateway_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = _labels(method=method, route=route, status=status)
            lines.append(f"bitware_gateway_requests_total{{{labels}}} {count}")
        lines += [
            "# HELP bitware_gateway_request_seconds_total Time spent answering, by route.",
            "# TYPE bitware_gateway_request_seconds_total counter",
        ]
        for (method, route), seconds in sorted(self.seconds.items()):
            labels = _labels(method=method, route=route)
            lines.append(f"bitware_gateway_request_seconds_total{{{labels}}} {seconds:.6f}")
        lines += [
            "# HELP bitware_gateway_upstream_errors_total Failed gRPC calls, by status code.",
            "# TYPE bitware_gateway_upstream_errors_total counter",
        ]
        for code, count in sorted(self.upstream_errors.items()):
            lines.append(f"bitware_gateway_upstream_errors_total{{{_labels(code=code)}}} {count}")
        lines += [
            "# HELP bitware_gateway_event_streams Server-Sent Event streams open now.",
            "# TYPE bitware_gateway_event_streams gauge",
            f"bitware_gateway_event_streams {self.open_streams}",
        ]
        return "\n".join(lines) + "\n"
