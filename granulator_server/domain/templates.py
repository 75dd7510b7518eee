"""Structure templates: what each kind of generated content looks like and how it is asked for.

A template pairs a JSON schema (the shape an LLM must return) with `ValidationRules` (what the
schema cannot say: how many items per level at each granularity, distinct titles, valid
references) and a prompt. Granularity runs from 1 (broad strokes, few items) to 5 (finest
detail, many items). The schemas themselves live in `schemas`; every text and number leaf of a
schema is also a required, non-empty field of the rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from granulator_server.domain import schemas
from granulator_server.domain.rules import (
    GRANULARITY_LEVELS,
    CountRule,
    DependencyGraph,
    ExactlyOne,
    Mix,
    Reference,
    UniqueRule,
    ValidationRules,
)
from granulator_server.domain.schemas import DIFFICULTIES, leaf_patterns

STRUCTURE_TYPES = ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path")


@dataclass(frozen=True)
class StructureTemplate:
    """A named recipe for one structure type; ``prompt_template`` uses ``str.format`` fields
    ``topic``, ``audience``, ``granularity``, ``counts``, ``constraints`` and ``options``."""

    name: str
    structure_type: str
    description: str
    json_schema: dict[str, Any]
    prompt_template: str
    rules: ValidationRules
    defaults: dict[str, Any] = field(default_factory=dict)
    version: int = 1


def expected_counts(template: StructureTemplate, granularity: int) -> dict[str, tuple[int, int]]:
    """The inclusive (min, max) item count of every list the template constrains.

    Raises ValueError for a granularity outside 1..5.
    """
    if not 1 <= granularity <= GRANULARITY_LEVELS:
        raise ValueError(f"granularity must be 1..{GRANULARITY_LEVELS}, got {granularity}")
    return {rule.name: rule.by_granularity[granularity - 1] for rule in template.rules.counts}


def build_prompt(
    template: StructureTemplate,
    topic: str,
    audience: str,
    granularity: int,
    constraints: dict[str, str],
    options: dict[str, str],
    feedback: str = "",
) -> tuple[str, str]:
    """Return ``(system_prompt, user_prompt)``; ``feedback`` from a failed attempt is appended."""
    counts = expected_counts(template, granularity)
    system = (
        f"You design {template.structure_type.replace('_', ' ')} structures: "
        f"{template.description} Reply with one JSON object that conforms to the given JSON "
        "schema. Every text field is filled in, titles are distinct, and each list holds the "
        "number of items the user asks for."
    )
    user = template.prompt_template.format(
        topic=topic,
        audience=audience,
        granularity=granularity,
        counts=_bullets(
            {name.replace("_", " "): f"{lo}-{hi}" for name, (lo, hi) in counts.items()}
        ),
        constraints=_bullets(constraints),
        options=_bullets({**template.defaults, **options}),
    )
    if feedback.strip():
        user += (
            "\n\nYour previous attempt was rejected. Fix these problems and return the whole "
            f"structure again:\n{feedback.strip()}"
        )
    return system, user


def match_template(templates: Iterable[StructureTemplate], query: str) -> StructureTemplate | None:
    """Find a template by exact name, then by structure type, then by part of its name.

    Matching ignores case and treats spaces and hyphens as underscores ("Knowledge map" finds
    type ``knowledge_map``); ties go to the first name in sorted order, so results are stable.
    """
    wanted = _normalise(query)
    if not wanted:
        return None
    ordered = sorted(templates, key=lambda t: t.name)
    for matches in (
        lambda t: _normalise(t.name) == wanted,
        lambda t: t.structure_type == wanted,
        lambda t: wanted in _normalise(t.name),
    ):
        found = next((t for t in ordered if matches(t)), None)
        if found is not None:
            return found
    return None


def _normalise(text: str) -> str:
    return text.strip().casefold().replace("-", "_").replace(" ", "_")


def _bullets(values: dict[str, Any]) -> str:
    if not values:
        return "- none"
    return "\n".join(f"- {key}: {value}" for key, value in values.items())


def _prompt(brief: str) -> str:
    return (
        f"{brief}\n\n"
        "Topic: {topic}\n"
        "Audience: {audience}\n"
        "Granularity: {granularity} of 5 (1 = broad strokes, 5 = finest detail)\n"
        "Item counts (inclusive ranges):\n{counts}\n"
        "Constraints:\n{constraints}\n"
        "Options:\n{options}"
    )


def _template(
    structure_type: str,
    description: str,
    schema: dict[str, Any],
    brief: str,
    rules: ValidationRules,
    tone: str,
) -> StructureTemplate:
    return StructureTemplate(
        name=f"{structure_type}_standard",
        structure_type=structure_type,
        description=description,
        json_schema=schema,
        prompt_template=_prompt(brief),
        rules=rules,
        defaults={"tone": tone, "language": "English"},
    )


# --- the six seed templates -------------------------------------------------------------------

_COURSE = _template(
    "course",
    "courses made of modules, lessons and learning objectives.",
    schemas.COURSE_SCHEMA,
    "Design a course. Each module holds lessons; each lesson lists concrete, measurable "
    "learning objectives. Modules are of similar size and titles are distinct across the course.",
    ValidationRules(
        counts=(
            CountRule("modules", "modules", ((2, 3), (3, 4), (4, 5), (5, 7), (6, 8))),
            CountRule(
                "lessons_per_module",
                "modules/*/lessons",
                ((2, 3), (2, 4), (3, 5), (4, 6), (5, 7)),
            ),
            CountRule(
                "objectives_per_lesson",
                "modules/*/lessons/*/objectives",
                ((1, 2), (2, 3), (2, 4), (3, 4), (3, 5)),
            ),
        ),
        required=leaf_patterns(schemas.COURSE_SCHEMA),
        descriptive=("summary", "modules/*/summary", "modules/*/lessons/*/summary"),
        unique=(
            UniqueRule("modules/*/title"),
            UniqueRule("modules/*/lessons/*/title"),
            UniqueRule("modules/*/lessons/*/objectives/*"),
        ),
    ),
    tone="practical",
)

_QUIZ = _template(
    "quiz",
    "multiple-choice quizzes with four options per question and one correct answer.",
    schemas.QUIZ_SCHEMA,
    "Write a multiple-choice quiz. Every question has exactly four options of which exactly one "
    "is correct, and an explanation. Mix difficulties: at least a fifth each of easy, medium and "
    "hard questions.",
    ValidationRules(
        counts=(
            CountRule("questions", "questions", ((4, 6), (6, 8), (8, 12), (12, 16), (16, 20))),
            CountRule("options_per_question", "questions/*/options", ((4, 4),) * 5),
        ),
        required=leaf_patterns(schemas.QUIZ_SCHEMA),
        descriptive=("instructions", "questions/*/explanation"),
        unique=(
            UniqueRule("questions/*/prompt"),
            UniqueRule("questions/*/options/*/text", across_parents=False),
        ),
        exactly_one=ExactlyOne("questions/*/options", "correct"),
        mix=Mix("questions/*/difficulty", DIFFICULTIES, min_share=0.2),
    ),
    tone="neutral",
)

_NOVEL = _template(
    "novel",
    "novel outlines made of acts, chapters and characters with arcs.",
    schemas.NOVEL_SCHEMA,
    "Outline a novel. Give every character an arc; split the story into acts of similar length; "
    "every chapter names a point-of-view character from the character list.",
    ValidationRules(
        counts=(
            CountRule("characters", "characters", ((2, 3), (2, 4), (3, 5), (4, 6), (5, 8))),
            CountRule("acts", "acts", ((2, 3), (3, 3), (3, 4), (3, 5), (4, 6))),
            CountRule(
                "chapters_per_act", "acts/*/chapters", ((1, 2), (2, 3), (3, 4), (4, 6), (5, 8))
            ),
        ),
        required=leaf_patterns(schemas.NOVEL_SCHEMA),
        descriptive=("logline", "characters/*/arc", "acts/*/summary", "acts/*/chapters/*/summary"),
        unique=(
            UniqueRule("characters/*/name"),
            UniqueRule("acts/*/title"),
            UniqueRule("acts/*/chapters/*/title"),
        ),
        references=(Reference("acts/*/chapters/*/pov", "characters/*/name"),),
    ),
    tone="literary",
)

_WORKFLOW = _template(
    "workflow",
    "workflows of steps whose dependencies form a directed acyclic graph.",
    schemas.WORKFLOW_SCHEMA,
    "Plan a workflow. Every step has a unique id; depends_on lists only ids of other steps in "
    "this workflow, and the dependencies never form a cycle.",
    ValidationRules(
        counts=(CountRule("steps", "steps", ((3, 5), (5, 7), (7, 10), (10, 14), (14, 20))),),
        required=leaf_patterns(schemas.WORKFLOW_SCHEMA),
        descriptive=("goal", "steps/*/description"),
        unique=(UniqueRule("steps/*/id"), UniqueRule("steps/*/title")),
        references=(Reference("steps/*/depends_on/*", "steps/*/id"),),
        acyclic=DependencyGraph("steps/*", "id", "depends_on"),
    ),
    tone="precise",
)

_KNOWLEDGE_MAP = _template(
    "knowledge_map",
    "knowledge maps of concepts connected by typed relations.",
    schemas.KNOWLEDGE_MAP_SCHEMA,
    "Map the concepts of a field. Every relation connects two concepts of this map by their ids.",
    ValidationRules(
        counts=(
            CountRule("concepts", "concepts", ((4, 6), (6, 9), (9, 12), (12, 16), (16, 24))),
            CountRule("relations", "relations", ((3, 8), (5, 12), (8, 18), (11, 24), (15, 36))),
        ),
        required=leaf_patterns(schemas.KNOWLEDGE_MAP_SCHEMA),
        descriptive=("scope", "concepts/*/definition", "relations/*/description"),
        unique=(UniqueRule("concepts/*/id"), UniqueRule("concepts/*/name")),
        references=(
            Reference("relations/*/source", "concepts/*/id"),
            Reference("relations/*/target", "concepts/*/id"),
        ),
    ),
    tone="explanatory",
)

_LEARNING_PATH = _template(
    "learning_path",
    "learning paths of milestones with resources and time estimates.",
    schemas.LEARNING_PATH_SCHEMA,
    "Lay out a learning path. Every milestone has a concrete outcome, a positive duration in "
    "hours and resources of varied kinds.",
    ValidationRules(
        counts=(
            CountRule("milestones", "milestones", ((2, 4), (3, 5), (4, 6), (5, 8), (7, 10))),
            CountRule(
                "resources_per_milestone",
                "milestones/*/resources",
                ((1, 2), (2, 3), (2, 4), (3, 5), (4, 6)),
            ),
        ),
        required=leaf_patterns(schemas.LEARNING_PATH_SCHEMA),
        descriptive=("goal", "milestones/*/outcome", "milestones/*/resources/*/description"),
        unique=(UniqueRule("milestones/*/title"), UniqueRule("milestones/*/resources/*/title")),
    ),
    tone="encouraging",
)

SEED_TEMPLATES: tuple[StructureTemplate, ...] = (
    _COURSE,
    _QUIZ,
    _NOVEL,
    _WORKFLOW,
    _KNOWLEDGE_MAP,
    _LEARNING_PATH,
)
