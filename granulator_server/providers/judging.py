"""The optional LLM judge: a model rates a stored structure on criteria that rules cannot check.

Level 1 asks for one overall rating; level 2 for accuracy, coherence and coverage; level 3 adds
audience fit and clarity and asks for concrete fixes. Each criterion is rated 0-10; the judge's
score is 100 × the mean rating / 10.
"""

from __future__ import annotations

import json
from typing import Any

from granulator_server.domain import StructureTemplate

CRITERIA = {
    1: ("overall",),
    2: ("accuracy", "coherence", "coverage"),
    3: ("accuracy", "coherence", "coverage", "audience_fit", "clarity"),
}


def criteria_for(level: int) -> tuple[str, ...]:
    return CRITERIA[min(3, max(1, level))]


def request(
    template: StructureTemplate, spec: dict[str, Any], document: dict[str, Any], level: int
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The judge's messages and the JSON schema of its verdict."""
    criteria = criteria_for(level)
    schema = {
        "type": "object",
        "properties": {
            "ratings": {
                "type": "object",
                "properties": {name: {"type": "number"} for name in criteria},
                "required": list(criteria),
                "additionalProperties": False,
            },
            "feedback": {"type": "string"},
        },
        "required": ["ratings", "feedback"],
        "additionalProperties": False,
    }
    detail = (
        "List concrete fixes, one per line, naming the part of the structure each concerns."
        if level >= 3
        else "Say in a few sentences what would improve it most."
    )
    system = (
        "You review generated content structures. Rate each criterion from 0 (useless) to 10 "
        f"(excellent): {', '.join(criteria)}. {detail} Reply with one JSON object."
    )
    user = (
        f"Structure type: {template.structure_type}\n"
        f"Topic: {spec.get('topic', '')}\nAudience: {spec.get('audience', '')}\n"
        f"Granularity: {spec.get('granularity', '')} of 5\n\n"
        f"Structure:\n{json.dumps(document, ensure_ascii=False)}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], schema


def read(verdict: dict[str, Any], level: int) -> tuple[float, dict[str, float], str]:
    """(score 0-100, criterion → 0-1, feedback) from a verdict that conforms to the schema of
    `request`."""
    ratings = verdict["ratings"]
    criteria = {
        name: min(10.0, max(0.0, float(ratings[name]))) / 10 for name in criteria_for(level)
    }
    score = round(100 * sum(criteria.values()) / len(criteria), 1)
    return score, criteria, str(verdict.get("feedback", "")).strip()
