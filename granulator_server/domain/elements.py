"""Flattening of a nested structure into a list of elements, one per node of its tree.

Storage and streaming work on flat rows rather than on six differently nested documents: each
`Element` knows its parent by index, so the tree can be rebuilt, and the list is in pre-order, so
a parent always precedes its children. The root element is the structure itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Element:
    """One node of the tree.

    ``order`` is the position among all children of the same parent, across its lists (a
    novel's characters come first, then its acts), so ``(parent_index, order)`` is unique.
    ``payload`` holds the node's remaining fields that are not children, e.g. ``summary``,
    ``difficulty`` or ``depends_on``.
    """

    index: int
    parent_index: int
    kind: str
    order: int
    title: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class _Node:
    """How one level of a structure maps to elements.

    ``title_key`` names the field used as the title; None means the item is itself the title
    (a string, like an objective). ``children`` pairs each list field with the node describing
    its items, in emission order.
    """

    kind: str
    title_key: str | None
    children: tuple[tuple[str, _Node], ...] = ()


_MODULE = _Node(
    "module",
    "title",
    (("lessons", _Node("lesson", "title", (("objectives", _Node("objective", None)),))),),
)
_QUESTION = _Node("question", "prompt", (("options", _Node("option", "text")),))
_ACT = _Node("act", "title", (("chapters", _Node("chapter", "title")),))
_MILESTONE = _Node("milestone", "title", (("resources", _Node("resource", "title")),))

_TREES = {
    "course": _Node("course", "title", (("modules", _MODULE),)),
    "quiz": _Node("quiz", "title", (("questions", _QUESTION),)),
    "novel": _Node("novel", "title", (("characters", _Node("character", "name")), ("acts", _ACT))),
    "workflow": _Node("workflow", "title", (("steps", _Node("step", "title")),)),
    "knowledge_map": _Node(
        "knowledge_map",
        "title",
        (("concepts", _Node("concept", "name")), ("relations", _Node("relation", "description"))),
    ),
    "learning_path": _Node("learning_path", "title", (("milestones", _MILESTONE),)),
}


def to_elements(structure_type: str, structure: dict[str, Any]) -> list[Element]:
    """Flatten ``structure`` into pre-order elements; element 0 is the single root.

    Missing lists count as empty. Raises ValueError for an unknown structure type.
    """
    tree = _TREES.get(structure_type)
    if tree is None:
        raise ValueError(f"unknown structure type {structure_type!r}")
    elements: list[Element] = []
    _emit(tree, structure, parent_index=-1, order=0, into=elements)
    return elements


def count_by_kind(elements: list[Element]) -> dict[str, int]:
    """How many elements of each kind, in order of first appearance."""
    return dict(Counter(element.kind for element in elements))


def _emit(node: _Node, item: Any, parent_index: int, order: int, into: list[Element]) -> None:
    index = len(into)
    fields: dict[str, Any] = item if isinstance(item, dict) else {}
    child_keys = {key for key, _ in node.children}
    title = str(item) if node.title_key is None else str(fields.get(node.title_key, ""))
    payload = {k: v for k, v in fields.items() if k != node.title_key and k not in child_keys}
    into.append(Element(index, parent_index, node.kind, order, title, payload))
    position = 0
    for key, child in node.children:
        items = fields.get(key)
        for child_item in items if isinstance(items, list) else []:
            _emit(child, child_item, index, position, into)
            position += 1
