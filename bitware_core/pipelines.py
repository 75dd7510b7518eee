"""What every service agrees a pipeline may contain: the capabilities the mesh knows and how a
template's stages are numbered.

KAM checks master templates against these rules when they are created; the orchestrator checks
the stage numbering again before it runs one (a template stored before the rule existed must not
run with a stage silently skipped).

The known capabilities are a fixed table rather than the workers registered at the moment: a
template is an immutable recipe, and whether it is valid must not depend on which workers happen
to be up when it is created. The built-in worker (the granulator) offers the table below; a
deployment that runs workers of its own names their capabilities in KAM's
`BITWARE_EXTRA_CAPABILITIES`.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Capability → its actions, as the granulator offers them.
BUILT_IN_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "granulate": ("generate",),
    "validate": ("validate",),
}
#: Actions that score an earlier stage's document instead of producing one: running such a
#: stage again reviews the same document (only an LLM judge may score it differently).
REVIEW_ACTIONS = frozenset({("validate", "validate")})


def stage_order_problems(orders: Sequence[int]) -> list[tuple[int, str]]:
    """`(index, problem)` for every stage whose order breaks the rule: N stages are numbered
    1..N, each number once. Orders that are unique and within 1..N are exactly 1..N."""
    problems = []
    seen: set[int] = set()
    for index, order in enumerate(orders):
        if order in seen:
            problems.append((index, f"{order} is used twice; stages are numbered 1..N"))
        elif not 1 <= order <= len(orders):
            problems.append(
                (index, f"must be from 1 to {len(orders)}: stages are numbered 1..N without gaps")
            )
        seen.add(order)
    return problems
