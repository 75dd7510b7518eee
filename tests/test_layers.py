"""Imports point one way: `bitware_mesh` (the CLI, the supervisor, the in-process mesh) → the
servers → `bitware_core` → the contracts (`bitware.*`). `bitware_client` sits beside the servers:
it speaks only the contracts, and only `bitware_mesh` uses it.

Every module's imports are read with `ast`, also those inside functions and under
`TYPE_CHECKING` (an arrow is an arrow, even when it is only followed by mypy), so a server that
imports another server, or the core that imports a server, fails here with the file and line.
A piece two servers both need belongs in `bitware_core`."""

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
