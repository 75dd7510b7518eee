"""Reading a Prometheus exposition in tests, by name and labels (never by label order or number
format, which are the client library's business)."""

from __future__ import annotations

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
