"""The sample Grafana dashboard (deploy/grafana/bitware.json) asks only for series the servers
export: each metric its queries name is on the /metrics of KAM, the orchestrator, a granulator
or the gateway of a real in-process mesh."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.common import Client
from tests.gateway.conftest import gateway_client, gateway_settings

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "bitware.json"
#: Every series of ours, and those of prometheus_client's process and GC collectors.
METRIC = re.compile(r"\b(?:bitware|process|python)_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported(body: str) -> set[str]:
    """The sample names an exposition offers, also for labelled series that have no sample
    yet (declared by their HELP and TYPE lines)."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(body)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


async def test_the_dashboard_names_only_metrics_the_servers_export(client: Client) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    mesh = client.mesh
    names: set[str] = set()
    for server in [mesh.kam, mesh.orchestrator, *mesh.granulators]:
        names |= exported(generate_latest(server.metrics).decode())
    async with gateway_client(gateway_settings(mesh)) as http:
        answer = await http.get("/metrics")
    names |= exported(answer.text)

    asked = {name for query in queries(dashboard) for name in METRIC.findall(query)}
    assert len(asked) >= 15, asked
    assert asked - names == set(), (
        f"the dashboard asks for series no server exports: {asked - names}"
    )
    # The series the dashboard exists for are among them.
    assert {
        "bitware_gateway_request_seconds_bucket",
        "bitware_rpc_seconds_bucket",
        "bitware_queue_depth",
        "bitware_model_calls_in_flight",
        "bitware_model_tokens_total",
        "bitware_model_cost_usd_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
    } <= asked


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            assert expr.count("{") == expr.count("}"), expr
