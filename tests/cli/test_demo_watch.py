"""`bitware demo` watches its execution in batches (several events a stream message) and still
prints every event, in order: against a real in-process mesh, counted at the orchestrator."""

from __future__ import annotations

import argparse
import re

import pytest

from bitware_mesh.cli.mesh import run_demo
from bitware_mesh.inprocess import InProcessMesh
from tests.metrics import stream_messages


async def test_demo_asks_for_batches_and_prints_every_event(
    mesh: InProcessMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stream_messages(mesh.orchestrator.metrics)
    code = await run_demo(
        mesh.kam.address,
        mesh.orchestrator.address,
        mesh.granulators[0].address,
        mesh.credentials.admin_email,
        mesh.credentials.admin_password,
        "AI Development",
        "course",
        0,
        argparse.Namespace(),
    )
    messages = stream_messages(mesh.orchestrator.metrics) - before
    out = capsys.readouterr().out
    assert code == 0, out
    lines = re.findall(r"^\[[#-]+\] +\d+% #(\d+) +(\w+)", out, re.MULTILINE)
    sequences = [int(sequence) for sequence, _ in lines]
    assert sequences == list(range(1, len(sequences) + 1)), out
    assert lines[-1][1] == "execution_succeeded", out
    assert 1 <= messages < len(sequences), f"{messages} messages for {len(sequences)} events"
