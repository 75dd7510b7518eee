"""docs/ARCHITECTURE.md is a map with addresses: each hop of "One request, hop by hop" names the
module and function that does it (`orchestrator_server/queue.py: claim`), and every such address
on the page must exist in the code, so that the map cannot quietly rot when code moves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "ARCHITECTURE.md"
#: `package/module.py: name` or `package/module.py: Class.method`, in backticks (a path from the
#: project root, with at least one folder).
ADDRESS = re.compile(r"`(\w+/[\w/]*\w\.py): ([A-Za-z_][\w.]*)`")


def _defined(path: Path) -> set[str]:
    """The module's top-level functions, classes and assigned names, and `Class.member` for
    each class's methods and class attributes."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}.{member.name}")
                elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                    names.add(f"{node.name}.{member.target.id}")
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _hops() -> list[str]:
    """The numbered paragraphs of "One request, hop by hop"."""
    text = PAGE.read_text()
    section = text.split("## One request, hop by hop", 1)[1].split("\n## ", 1)[0]
    return [hop for hop in re.split(r"\n(?=\d+\. )", section) if re.match(r"\d+\. ", hop)]


def test_every_address_on_the_page_exists_in_the_code() -> None:
    addresses = ADDRESS.findall(PAGE.read_text())
    assert len(addresses) >= 20, "the map has lost its addresses"
    missing = []
    for module, name in addresses:
        path = ROOT / module
        if not path.is_file():
            missing.append(f"{module}: no such file")
        elif name not in _defined(path):
            missing.append(f"{module}: {name} is not defined there")
    assert not missing, "ARCHITECTURE.md names code that is not there:\n" + "\n".join(missing)


def test_every_hop_names_where_it_happens() -> None:
    hops = _hops()
    assert len(hops) >= 10
    unaddressed = [hop.split("\n", 1)[0] for hop in hops if not ADDRESS.search(hop)]
    assert not unaddressed, "hops without a `module.py: function` address:\n" + "\n".join(
        unaddressed
    )


def test_a_wrong_address_is_caught() -> None:
    defined = _defined(ROOT / "orchestrator_server" / "queue.py")
    assert "claim" in defined and "Claim" in defined
    assert "no_such_function" not in defined
