"""Declarative validation rules for a structure template, and the path patterns they use.

A rule names parts of a structure with a slash pattern relative to the root, where ``*`` stands
for every index of a list: ``modules/*/lessons`` is every module's lesson list and
``modules/*/lessons/*/objectives/*`` every objective string. `resolve` turns a pattern into the
concrete JSON-pointer paths and values it matches; the validator and the quality score are both
built on it, so a rule written here means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GRANULARITY_LEVELS = 5


@dataclass(frozen=True)
class CountRule:
    """How many items a list may hold, for each granularity 1..5.

    ``name`` is what prompts and `expected_counts` call the list (``lessons_per_module``).
    """

    name: str
    path: str
    by_granularity: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if len(self.by_granularity) != GRANULARITY_LEVELS:
            raise ValueError(f"{self.name}: need one (min, max) per granularity level")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class UniqueRule:
    """Values at ``path`` must be distinct (case-insensitively).

    With ``across_parents`` false, only siblings are compared: two questions may both offer
    "None of the above", but one question may not offer it twice.
    """

    path: str
    across_parents: bool = True


@dataclass(frozen=True)
class Reference:
    """Every value at ``source`` must equal some value at ``target`` (an id or a name)."""

    source: str
    target: str


@dataclass(frozen=True)
class DependencyGraph:
    """The objects at ``nodes`` (e.g. ``steps/*``) form a graph through ``edges_field``, a list
    of other nodes' ``id_field`` values; it must have no cycles."""

    nodes: str
    id_field: str
    edges_field: str


@dataclass(frozen=True)
class ExactlyOne:
    """In every list at ``container``, exactly one item has ``flag`` set to true."""

    container: str
    flag: str


@dataclass(frozen=True)
class Mix:
    """Each of ``values`` makes up at least ``min_share`` of the values found at ``path``."""

    path: str
    values: tuple[str, ...]
    min_share: float


@dataclass(frozen=True)
class ValidationRules:
    """Everything a structure must satisfy beyond its JSON schema.

    ``required`` lists leaf fields that must be non-empty (text not blank, numbers positive);
    ``descriptive`` lists the prose fields whose length the quality score weighs.
    ``accept_below_minimum``: when no attempt reaches the stage's minimum quality score, the
    best attempt is delivered anyway, provided it breaks no integrity rule (see
    `validation.INTEGRITY_RULES`); by default such a stage fails.
    """

    counts: tuple[CountRule, ...]
    required: tuple[str, ...]
    descriptive: tuple[str, ...]
    unique: tuple[UniqueRule, ...] = ()
    references: tuple[Reference, ...] = ()
    acyclic: DependencyGraph | None = None
    exactly_one: ExactlyOne | None = None
    mix: Mix | None = None
    accept_below_minimum: bool = False


def resolve(value: Any, pattern: str) -> list[tuple[str, Any]]:
    """Return ``(pointer, value)`` for every match of ``pattern`` in document order.

    Parts that do not exist or have the wrong type match nothing: the schema check reports
    those, so the rule checks can run on a malformed structure without failing.
    """
    matches: list[tuple[str, Any]] = [("", value)]
    for part in pattern.split("/"):
        found: list[tuple[str, Any]] = []
        for pointer, node in matches:
            if part == "*":
                if isinstance(node, list):
                    found.extend((f"{pointer}/{i}", item) for i, item in enumerate(node))
            elif isinstance(node, dict) and part in node:
                found.append((f"{pointer}/{part}", node[part]))
        matches = found
    return matches


def is_filled(value: Any) -> bool:
    """Whether a required leaf carries content: non-blank text, a positive number."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, int | float):
        return value > 0
    return value is not None
