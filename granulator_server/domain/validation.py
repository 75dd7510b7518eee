"""Validation of generated structures against their template, and a quality score.

`validate` lists hard violations: JSON-schema errors and broken template rules. `score_quality`
turns the same checks, plus two softer measures, into seven components in [0, 1]:

=============  ======  =========================================================================
component      weight  value
=============  ======  =========================================================================
schema         0.20    0.5 ** (number of JSON-schema errors)
completeness   0.15    share of required leaves that are filled (text non-blank, numbers > 0)
counts         0.20    worst count rule of: mean over its lists of n/min when short, max/n when
                       long, 1 within range (a missing list counts as empty)
uniqueness     0.15    worst unique rule of: distinct values / values
balance        0.10    worst nested count rule of: 1 - clamp((cv - 0.25) / 0.75), where cv is
                       the coefficient of variation of the list sizes across parents
detail         0.05    mean over descriptive fields of min(1, words / (5 + granularity))
integrity      0.15    0.5 ** (dangling references + cycles + questions without exactly one
                       correct option + difficulty levels under their share)
=============  ======  =========================================================================

    score = 100 * (sum of weight * component) * (min of components)

The weighted sum measures overall quality. The weakest-link factor is there because a sum alone
cannot fail a structure that is broken in one way only: with no weight above 0.20, a quiz whose
questions are all easy or a course whose modules are all copies would still score 80. Multiplying
by the worst component sinks those (below 50) while a sound structure keeps every component near
1 and scores above 80. Counts, uniqueness and balance take their worst rule for the same reason:
correct lesson counts do not make up for a single module.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from bitware_core.domain import Violation
from granulator_server.domain.quick_schema import Check, compile_check
from granulator_server.domain.rules import ValidationRules, is_filled, resolve
from granulator_server.domain.templates import StructureTemplate, expected_counts

WEIGHTS = {
    "schema": 0.20,
    "completeness": 0.15,
    "counts": 0.20,
    "uniqueness": 0.15,
    "balance": 0.10,
    "detail": 0.05,
    "integrity": 0.15,
}
# Below this coefficient of variation, list sizes are as even as a careful author makes them.
_BALANCE_TOLERANCE = 0.25
_MAX_FEEDBACK_LINES = 15
#: Rules whose violation makes a structure unusable (see the module docstring).
INTEGRITY_RULES = frozenset({"dangling_reference", "cycle", "single_correct", "count_hard_limit"})
#: A list is outside its hard limits below min / HARD_COUNT_FACTOR or above max × this.
HARD_COUNT_FACTOR = 2


#: Quick checks (`quick_schema`) by the identity of the schema they were made from, which each
#: entry holds so that the identity cannot pass to another object. Schemas are not changed in
#: place (a template change makes new `StructureTemplate`s), so an entry stays right.
_QUICK: dict[int, tuple[dict[str, Any], Check | None]] = {}
QUICK_KEPT = 256


def quick_check(schema: dict[str, Any]) -> Check | None:
    """The schema's quick check (None when it has none), made once per schema object."""
    entry = _QUICK.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    check = compile_check(schema)
    if len(_QUICK) >= QUICK_KEPT:
        del _QUICK[next(iter(_QUICK))]  # the oldest
    _QUICK[id(schema)] = (schema, check)
    return check


def schema_errors(schema: dict[str, Any], value: Any) -> list[tuple[str, str]]:
    """Every way `value` breaks `schema`, as (JSON pointer, message) in document order; the
    pointer of the document itself is empty. A valid value is recognised by the schema's
    quick check where it has one; `jsonschema` lists the errors of the others."""
    check = quick_check(schema)
    if check is not None and check(value):
        return []
    # A validator per check: building one takes ~3.5 µs of a check's 300–800 µs.
    errors = sorted(
        Draft202012Validator(schema).iter_errors(value),
        key=lambda e: [str(part) for part in e.absolute_path],
    )
    return [("".join(f"/{part}" for part in e.absolute_path), e.message) for e in errors]


@dataclass(frozen=True)
class QualityReport:
    """A 0-100 score, its components (each 0-1), text to fix it by, and the violations."""

    score: float
    components: dict[str, float]
    feedback: str
    violations: list[Violation]

    @property
    def integrity_failures(self) -> list[Violation]:
        """The violations that make the structure unusable (`INTEGRITY_RULES`)."""
        return [v for v in self.violations if v.rule in INTEGRITY_RULES]


def validate(
    template: StructureTemplate, structure: dict[str, Any], granularity: int
) -> list[Violation]:
    """All schema and rule violations, schema errors first; empty when the structure is valid."""
    return _Checker(template, structure, granularity).violations


def score_quality(
    template: StructureTemplate,
    structure: dict[str, Any],
    granularity: int,
    *,
    schema_checked: bool = False,
) -> QualityReport:
    """Score a structure with the formula in the module docstring. `schema_checked`: the
    structure is already known to match the template's JSON Schema (the `openai` provider
    returns nothing else), so that check, a sizeable share of the CPU, is not run again."""
    checker = _Checker(template, structure, granularity, schema_checked)
    components = checker.components
    weighted = sum(WEIGHTS[name] * value for name, value in components.items())
    score = round(100 * weighted * min(components.values()), 1)
    return QualityReport(score, components, checker.feedback(), checker.violations)


class _Checker:
    """Runs every check once, collecting violations and component values together."""

    def __init__(
        self,
        template: StructureTemplate,
        structure: Any,
        granularity: int,
        schema_checked: bool = False,
    ) -> None:
        self._rules: ValidationRules = template.rules
        self._structure = structure
        self._granularity = granularity
        self._counts = expected_counts(template, granularity)
        self.violations: list[Violation] = []
        self._notes: list[str] = []
        self._resolved: dict[str, list[tuple[str, Any]]] = {}
        schema_errors = 0 if schema_checked else self._schema(template.json_schema)
        self.components = {
            "schema": 0.5**schema_errors,
            "completeness": self._completeness(),
            "counts": self._count_ranges(),
            "uniqueness": self._uniqueness(),
            "balance": self._balance(),
            "detail": self._detail(),
            "integrity": 0.5 ** self._integrity(),
        }

    def feedback(self) -> str:
        lines = [f"- {v.path or '/'}: {v.message}" for v in self.violations]
        if len(lines) > _MAX_FEEDBACK_LINES:
            hidden = len(lines) - _MAX_FEEDBACK_LINES
            lines = [*lines[:_MAX_FEEDBACK_LINES], f"- ... and {hidden} more like these"]
        return "\n".join(lines + [f"- {note}" for note in self._notes])

    def _add(self, path: str, rule: str, message: str) -> None:
        self.violations.append(Violation(path, rule, message))

    def _schema(self, schema: dict[str, Any]) -> int:
        errors = schema_errors(schema, self._structure)
        for path, message in errors:
            self._add(path, "schema", message)
        return len(errors)

    def _completeness(self) -> float:
        leaves = [match for pattern in self._rules.required for match in self._resolve(pattern)]
        empty = [pointer for pointer, value in leaves if not is_filled(value)]
        for pointer in empty:
            self._add(pointer, "required", "must not be empty")
        return 1.0 - len(empty) / len(leaves) if leaves else 1.0

    def _count_ranges(self) -> float:
        worst = 1.0
        for rule in self._rules.counts:
            lo, hi = self._counts[rule.name]
            ratios = []
            for pointer, size in self._sizes(rule.path):
                ratios.append(min(1.0, size / lo if lo else 1.0, hi / size if size else 1.0))
                if size * HARD_COUNT_FACTOR < lo or size > hi * HARD_COUNT_FACTOR:
                    self._add(
                        pointer,
                        "count_hard_limit",
                        f"expected {lo}-{hi} {rule.label}, found {size}: far outside the range",
                    )
                elif not lo <= size <= hi:
                    self._add(
                        pointer, "count_range", f"expected {lo}-{hi} {rule.label}, found {size}"
                    )
            if ratios:
                worst = min(worst, statistics.fmean(ratios))
        return worst

    def _uniqueness(self) -> float:
        worst = 1.0
        for rule in self._rules.unique:
            seen: dict[tuple[str, str], str] = {}
            total = 0
            for pointer, value in self._resolve(rule.path):
                if not isinstance(value, str) or not value.strip():
                    continue
                total += 1
                scope = "" if rule.across_parents else pointer.rsplit("/", 2)[0]
                key = (scope, value.strip().casefold())
                if key in seen:
                    self._add(pointer, "duplicate_title", f"'{value}' repeats {seen[key]}")
                else:
                    seen[key] = pointer
            if total:
                worst = min(worst, len(seen) / total)
        return worst

    def _balance(self) -> float:
        worst = 1.0
        for rule in self._rules.counts:
            sizes = [size for _, size in self._sizes(rule.path)]
            if "*" not in rule.path or len(sizes) < 2 or not any(sizes):
                continue
            if min(sizes) == max(sizes):
                continue  # no spread: the value is 1.0 (statistics.pstdev is slow to say so)
            spread = statistics.pstdev(sizes) / statistics.fmean(sizes)
            value = 1.0 - min(1.0, max(0.0, spread - _BALANCE_TOLERANCE) / (1 - _BALANCE_TOLERANCE))
            if value < 1.0:
                self._notes.append(
                    f"{rule.label} vary too much (sizes {sizes}); spread items evenly."
                )
            worst = min(worst, value)
        return worst

    def _detail(self) -> float:
        target = 5 + self._granularity
        texts = [
            v for p in self._rules.descriptive for _, v in self._resolve(p) if isinstance(v, str)
        ]
        if not texts:
            return 1.0
        words = [len(text.split()) for text in texts]
        short = sum(count < target for count in words)
        if short:
            self._notes.append(f"{short} descriptions are under {target} words; say more.")
        return statistics.fmean(min(1.0, count / target) for count in words)

    def _integrity(self) -> int:
        before = len(self.violations)
        self._references()
        self._cycles()
        self._exactly_one()
        self._mix()
        return len(self.violations) - before

    def _references(self) -> None:
        for ref in self._rules.references:
            targets = {value for _, value in self._resolve(ref.target) if isinstance(value, str)}
            for pointer, value in self._resolve(ref.source):
                # A reference that is not a string (a list, an object) names nothing either.
                if not isinstance(value, str) or value not in targets:
                    self._add(pointer, "dangling_reference", f"'{value}' matches no {ref.target}")

    def _cycles(self) -> None:
        graph = self._rules.acyclic
        if graph is None:
            return
        nodes = [(p, n) for p, n in self._resolve(graph.nodes) if isinstance(n, dict)]
        pointers = {str(node.get(graph.id_field)): pointer for pointer, node in nodes}
        edges = {
            str(node.get(graph.id_field)): [str(d) for d in _as_list(node.get(graph.edges_field))]
            for _, node in nodes
        }
        state: dict[str, str] = {}  # "open" while on the DFS stack, then "done"

        def visit(node_id: str, trail: list[str]) -> None:
            state[node_id] = "open"
            trail = [*trail, node_id]
            for dep in edges[node_id]:
                if state.get(dep) == "open":
                    loop = " -> ".join([*trail[trail.index(dep) :], dep])
                    self._add(pointers[node_id], "cycle", f"dependencies form a cycle: {loop}")
                elif dep in edges and dep not in state:
                    visit(dep, trail)
            state[node_id] = "done"

        for node_id in edges:
            if node_id not in state:
                visit(node_id, [])

    def _exactly_one(self) -> None:
        rule = self._rules.exactly_one
        if rule is None:
            return
        for pointer, items in self._resolve(rule.container):
            if not isinstance(items, list):
                continue
            flagged = sum(isinstance(i, dict) and i.get(rule.flag) is True for i in items)
            if flagged != 1:
                self._add(
                    pointer, "single_correct", f"exactly one must be {rule.flag}, not {flagged}"
                )

    def _mix(self) -> None:
        rule = self._rules.mix
        if rule is None:
            return
        found = Counter(value for _, value in self._resolve(rule.path) if isinstance(value, str))
        total = sum(found.values())
        for value in rule.values:
            share = found[value] / total if total else 0.0
            if share < rule.min_share:
                parent = "/" + rule.path.split("/")[0]
                self._add(
                    parent,
                    "difficulty_mix",
                    f"'{value}' makes up {share:.0%}, at least {rule.min_share:.0%} wanted",
                )

    def _resolve(self, pattern: str) -> list[tuple[str, Any]]:
        """`rules.resolve` on the structure, once per pattern (checks share patterns)."""
        found = self._resolved.get(pattern)
        if found is None:
            found = self._resolved[pattern] = resolve(self._structure, pattern)
        return found

    def _sizes(self, pattern: str) -> list[tuple[str, int]]:
        """Size of every list at ``pattern``; missing or malformed lists count as empty."""
        parent_pattern, _, key = pattern.rpartition("/")
        parents = self._resolve(parent_pattern) if parent_pattern else [("", self._structure)]
        sizes = []
        for pointer, parent in parents:
            items = parent.get(key) if isinstance(parent, dict) else None
            sizes.append((f"{pointer}/{key}", len(items) if isinstance(items, list) else 0))
        return sizes


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
