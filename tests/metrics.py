"""Reading a Prometheus exposition in tests, by name and labels (never by label order or number
format, which are the client library's business)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def value(body: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`; AssertionError when
    there is none."""
    found = [
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert found, f"no sample {name}{labels} in:\n{body}"
    return sum(found)


def names(body: str) -> set[str]:
    """Every sample name in the exposition."""
    return {s.name for f in text_string_to_metric_families(body) for s in f.samples}


WATCH_EXECUTION = "/bitware.orchestrator.v1.OrchestratorService/WatchExecution"


def stream_messages(registry: CollectorRegistry, method: str = WATCH_EXECUTION) -> float:
    """How many messages a server has sent on `method`'s streams (0 before its first stream):
    the count the server itself keeps, so a test sees what really went on the wire."""
    body = generate_latest(registry).decode()
    found = [
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "bitware_rpc_stream_messages_total"
        and sample.labels.get("method") == method
    ]
    return sum(found)
