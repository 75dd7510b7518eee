"""`pip install ./client` into a fresh virtual environment gives a client that works on its own:
no SQLAlchemy, FastAPI, openai or server code, and the README's example runs against a mesh."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.common import Client

ROOT = Path(__file__).resolve().parents[2]


async def sh(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 240)
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def test_the_client_installs_alone_and_runs_the_readme_example(
    client: Client, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    await sh(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    await sh(python, "-m", "pip", "install", "-q", ROOT / "client", cwd=tmp_path)

    absent = await sh(
        python,
        "-c",
        "import importlib.util as u, bitware_client, bitware.kam.v1.requests_pb2; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi', 'openai', 'uvicorn', 'bitware_core',"
        " 'bitware_mesh', 'kam_server', 'gateway') if u.find_spec(m)))",
        cwd=tmp_path,
    )
    assert absent.strip() == "[]", absent

    mesh = client.mesh
    output = await sh(
        python,
        ROOT / "client" / "examples" / "run.py",
        cwd=tmp_path,
        env={
            "BITWARE_KAM": mesh.kam.address,
            "BITWARE_ORCHESTRATOR": mesh.orchestrator.address,
            "BITWARE_GRANULATOR": mesh.granulators[0].address,
            "BITWARE_API_KEY": client.api_key,
            "PYTHONPATH": "",
        },
    )
    lines = output.splitlines()
    assert any(line.startswith("course ") for line in lines), output  # the root element
    assert sum(line.startswith("module ") for line in lines) >= 2, output
