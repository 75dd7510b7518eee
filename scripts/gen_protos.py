"""Generate the Python code for every .proto under protos/ — the only writer of generated code.

Writes `*_pb2.py`, `*_pb2_grpc.py` and mypy-protobuf stubs (`*.pyi`) next to each .proto, and an
empty `__init__.py` in every package folder, so that `bitware.kam.v1` imports with `protos/` on
the path. CI runs this and fails if the tree differs from what is committed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        raise SystemExit(f"{name} not found next to {sys.executable}; pip install mypy-protobuf")
    return path


def main() -> int:
    sources = sorted(PROTOS.rglob("*.proto"))
    for old in PROTOS.rglob("*"):
        if old.name.endswith(GENERATED_SUFFIXES):
            old.unlink()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={PROTOS}",
        f"--grpc_python_out={PROTOS}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={PROTOS}",
        f"--mypy_grpc_out={PROTOS}",
        *(str(source.relative_to(PROTOS)) for source in sources),
    ]
    subprocess.run(command, check=True, cwd=PROTOS)
    for folder in {source.parent for source in sources}:
        while folder != PROTOS:
            (folder / "__init__.py").touch()
            folder = folder.parent
    print(f"generated code for {len(sources)} proto files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
