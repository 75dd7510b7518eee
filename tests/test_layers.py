"""Imports point one way: `bitware_mesh` (the CLI, the supervisor, the in-process mesh) → the
servers → `bitware_core` → the contracts (`bitware.*`). `bitware_client` sits beside the servers:
it speaks only the contracts, and only `bitware_mesh` uses it.

Every module's imports are read with `ast`, also those inside functions and under
`TYPE_CHECKING` (an arrow is an arrow, even when it is only followed by mypy), so a server that
imports another server, or the core that imports a server, fails here with the file and line.
A piece two servers both need belongs in `bitware_core`.

Inside a server, only its edge speaks gRPC: `server.py`, the handlers and its clients of other
services. Every other module is logic, which imports neither `grpc` nor a generated `*_pb2_grpc`
stub (it may use the messages, `*_pb2`), so its rules can be tested without a server."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("kam_server", "orchestrator_server", "granulator_server", "gateway")

#: What each of our packages may import of ours, besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "bitware": frozenset(),
    "bitware_client": frozenset({"bitware"}),
    "bitware_core": frozenset({"bitware"}),
    **{server: frozenset({"bitware", "bitware_core"}) for server in SERVERS},
    "bitware_mesh": frozenset({"bitware", "bitware_client", "bitware_core", *SERVERS}),
}
#: The modules of each server that may import grpc (a folder ends with "/"); the rest is logic.
GRPC_EDGE: dict[str, frozenset[str]] = {
    "kam_server": frozenset({"server.py", "services/", "orchestrator_client.py"}),
    # dispatch.py is also the orchestrator's client of the workers' WorkerService.
    "orchestrator_server": frozenset({"server.py", "service.py", "kam_client.py", "dispatch.py"}),
    "granulator_server": frozenset({"server.py", "service.py", "worker.py"}),
    # The gateway's routes and pages are HTTP; its calls to the services and their errors are
    # gRPC.
    "gateway": frozenset({"calls.py", "upstream.py", "errors.py", "sse.py"}),
}
#: Where each package's source is (the contracts and the client have import roots of their own).
FOLDERS = {
    "bitware": ROOT / "protos" / "bitware",
    "bitware_client": ROOT / "client" / "bitware_client",
}


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in `source`, wherever it stands, and every
    `importlib.import_module` of a constant name. Relative imports never leave their package."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _name(node.func) == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def _name(function: ast.expr) -> str:
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else ""


def wrong_arrows(package: str, source: str) -> list[str]:
    """`line: module` for each import of `source` (a module of `package`) that points the wrong
    way: into one of our packages that `package` may not import."""
    return [
        f"{line}: {module}"
        for line, module in imported(source)
        if (top := module.split(".")[0]) in MAY_IMPORT
        and top != package
        and top not in MAY_IMPORT[package]
    ]


def test_every_package_the_project_ships_has_a_layer() -> None:
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    shipped = {
        name.split(".")[0]
        for where in found["find"]["where"]
        for name in find_packages(ROOT / where, include=found["find"]["include"])
    }
    assert shipped == set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_one_way(package: str) -> None:
    folder = FOLDERS.get(package, ROOT / package)
    modules = sorted(folder.rglob("*.py"))
    assert modules, f"no modules under {folder}"
    wrong = [
        f"{path.relative_to(ROOT)}:{arrow}"
        for path in modules
        for arrow in wrong_arrows(package, path.read_text())
    ]
    allowed = ", ".join(sorted(MAY_IMPORT[package])) or "nothing of ours"
    assert not wrong, f"{package} may import only {allowed}; wrong arrows:\n" + "\n".join(wrong)


def grpc_imports(source: str) -> list[str]:
    """`line: module` for each import of grpc (or a package of its own, such as `grpc_status`)
    or of a generated `*_pb2_grpc` stub in `source`."""
    found = []
    for line, module in imported(source):
        if module.split(".")[0].startswith("grpc") or module.endswith("_pb2_grpc"):
            found.append(f"{line}: {module}")
    # `from bitware.x.v1 import x_pb2_grpc` names the stub module after `import`.
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.endswith("_grpc"):
            found += [
                f"{node.lineno}: {node.module}.{alias.name}"
                for alias in node.names
                if alias.name.endswith("_pb2_grpc")
            ]
    return sorted(found, key=lambda arrow: int(arrow.split(":")[0]))


def at_the_edge(server: str, path: Path) -> bool:
    inside = path.relative_to(ROOT / server).as_posix()
    return any(
        inside == edge or (edge.endswith("/") and inside.startswith(edge))
        for edge in GRPC_EDGE[server]
    )


@pytest.mark.parametrize("server", SERVERS)
def test_logic_modules_do_not_import_grpc(server: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{arrow}"
        for path in sorted((ROOT / server).rglob("*.py"))
        if not at_the_edge(server, path)
        for arrow in grpc_imports(path.read_text())
    ]
    edge = ", ".join(sorted(GRPC_EDGE[server]))
    assert not wrong, f"in {server} only {edge} may import grpc; logic that does:\n" + "\n".join(
        wrong
    )


def test_a_grpc_import_of_any_spelling_is_seen() -> None:
    source = """
import grpc
from grpc import aio
from grpc_status import rpc_status
from bitware.worker.v1 import worker_pb2, worker_pb2_grpc
from bitware.kam.v1.auth_pb2_grpc import AuthServiceStub
from google.protobuf import json_format
"""
    assert grpc_imports(source) == [
        "2: grpc",
        "3: grpc",
        "4: grpc_status",
        "5: bitware.worker.v1.worker_pb2_grpc",
        "6: bitware.kam.v1.auth_pb2_grpc",
    ]


def test_an_arrow_hidden_in_a_function_or_for_mypy_is_still_seen() -> None:
    source = """
from typing import TYPE_CHECKING

import grpc

from bitware.kam.v1 import auth_pb2
from bitware_core import convert
from . import sibling

if TYPE_CHECKING:
    from kam_server.server import KamServer

def start():
    import bitware_mesh.inprocess
    importlib.import_module("gateway.app")
"""
    assert wrong_arrows("bitware_core", source) == [
        "11: kam_server.server",
        "14: bitware_mesh.inprocess",
        "15: gateway.app",
    ]
    assert wrong_arrows("orchestrator_server", source) == [
        "11: kam_server.server",
        "14: bitware_mesh.inprocess",
        "15: gateway.app",
    ]
    assert wrong_arrows("bitware_mesh", source) == []
