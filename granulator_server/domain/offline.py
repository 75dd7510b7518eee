"""Offline generation: a deterministic, rule-abiding structure built without an LLM.

It serves when no model is configured or reachable, and as a reference for what a valid
structure looks like. Every list gets the middle of its count range for the granularity, titles
come from fixed phrase banks combined with the topic, and nothing is random: the only variation,
which character names a novel starts from, is derived from a hash of the inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from granulator_server.domain.schemas import DIFFICULTIES, RELATION_KINDS, RESOURCE_KINDS
from granulator_server.domain.templates import StructureTemplate, expected_counts


def generate_offline(
    template: StructureTemplate,
    topic: str,
    audience: str,
    granularity: int,
    options: dict[str, str],
) -> dict[str, Any]:
    """Build a structure of ``template.structure_type`` that passes `validate` with no violations.

    ``options`` override the template defaults; ``tone`` flavours the descriptions. Raises
    ValueError for a granularity outside 1..5 or a structure type it cannot build.
    """
    counts = {
        name: (lo + hi) // 2 for name, (lo, hi) in expected_counts(template, granularity).items()
    }
    settings = {**template.defaults, **options}
    seed = hashlib.sha256(f"{template.name}|{topic}|{audience}".encode()).digest()
    context = _Context(
        topic=topic.strip(),
        audience=audience.strip(),
        tone=str(settings.get("tone", "practical")),
        counts=counts,
        seed=int.from_bytes(seed[:4], "big"),
    )
    builder = _BUILDERS.get(template.structure_type)
    if builder is None:
        raise ValueError(f"no offline generator for structure type {template.structure_type!r}")
    return builder(context)


@dataclass(frozen=True)
class _Context:
    topic: str
    audience: str
    tone: str
    counts: dict[str, int]
    seed: int


def _cycle(bank: tuple[str, ...], n: int, shift: int = 0) -> list[str]:
    return [bank[(shift + i) % len(bank)] for i in range(n)]


def _distinct(bank: tuple[str, ...], n: int, shift: int = 0) -> list[str]:
    """``n`` distinct phrases from ``bank``, numbering repeats once the bank runs out."""
    size = len(bank)
    return [bank[(shift + i) % size] + (f" {i // size + 1}" if i >= size else "") for i in range(n)]


_MODULE_THEMES = (
    "Foundations of {}",
    "Core Concepts of {}",
    "Tools and Techniques for {}",
    "{} in Practice",
    "Designing with {}",
    "Quality and Evaluation in {}",
    "Advanced {}",
    "The Future of {}",
)
_LESSON_ANGLES = (
    "Key Ideas",
    "Worked Examples",
    "Hands-on Practice",
    "Common Pitfalls",
    "Tools of the Trade",
    "Case Study",
    "Review and Reflection",
)
_VERBS = ("Explain", "Apply", "Compare", "Evaluate", "Design")


def _course(c: _Context) -> dict[str, Any]:
    modules = []
    for theme in _distinct(_MODULE_THEMES, c.counts["modules"]):
        module_title = theme.format(c.topic)
        lessons = []
        for angle in _distinct(_LESSON_ANGLES, c.counts["lessons_per_module"]):
            lessons.append(
                {
                    "title": f"{angle}: {module_title}",
                    "summary": f"A {c.tone} lesson on {angle.lower()} for {module_title}, "
                    f"written for {c.audience} and grounded in concrete examples.",
                    "objectives": [
                        f"{verb} the {angle.lower()} of {module_title}"
                        for verb in _distinct(_VERBS, c.counts["objectives_per_lesson"])
                    ],
                }
            )
        modules.append(
            {
                "title": module_title,
                "summary": f"This module covers {module_title.lower()} in a {c.tone} way, "
                f"moving {c.audience} from explanation to guided practice.",
                "lessons": lessons,
            }
        )
    return {
        "title": f"{c.topic}: A Course for {c.audience}",
        "summary": f"A {c.tone} course that takes {c.audience} through {c.topic} step by step, "
        "from first principles to confident independent work.",
        "modules": modules,
    }


_ASPECTS = (
    "the main purpose",
    "a core principle",
    "a typical first step",
    "a common mistake",
    "a useful tool",
    "a key trade-off",
    "a sign of good practice",
    "a frequent misconception",
    "an advanced technique",
    "the best way to measure success",
    "a real-world application",
    "an important limitation",
    "a safety consideration",
    "a performance concern",
    "a historical milestone",
    "a design decision",
    "a debugging strategy",
    "a collaboration practice",
    "a quality check",
    "an ethical question",
)


def _quiz(c: _Context) -> dict[str, Any]:
    n = c.counts["questions"]
    questions = []
    for i, aspect in enumerate(_distinct(_ASPECTS, n)):
        correct = i % 4  # rotate the answer position so it is not always the first option
        texts = [
            f"It describes {aspect} of {c.topic} accurately",
            f"It confuses {aspect} with an unrelated field",
            f"It applies only to {c.topic} before modern tools existed",
            f"It is true of {aspect} only by coincidence",
        ]
        texts[0], texts[correct] = texts[correct], texts[0]
        questions.append(
            {
                "prompt": f"Which statement best captures {aspect} of {c.topic}?",
                "difficulty": DIFFICULTIES[i * len(DIFFICULTIES) // n],
                "options": [{"text": t, "correct": j == correct} for j, t in enumerate(texts)],
                "explanation": f"Only the correct option reflects {aspect} of {c.topic}; the "
                "others mix in unrelated or outdated claims.",
            }
        )
    return {
        "title": f"{c.topic} Check-up",
        "instructions": f"Answer each question by choosing the one correct option; questions "
        f"grow harder as you go, written for {c.audience}.",
        "questions": questions,
    }


_NAMES = (
    "Ada Marlow",
    "Ben Okafor",
    "Clara Voss",
    "Dev Patel",
    "Elena Ruiz",
    "Felix Grant",
    "Greta Lind",
    "Hiro Tanaka",
)
_ROLES = ("protagonist", "antagonist", "mentor", "ally", "rival", "confidant")
_ACT_STAGES = ("Setup", "Confrontation", "Crisis", "Resolution", "Aftermath", "Legacy")


def _novel(c: _Context) -> dict[str, Any]:
    names = _distinct(_NAMES, c.counts["characters"], shift=c.seed)
    characters = [
        {
            "name": name,
            "role": role,
            "arc": f"{name} begins wary of {c.topic} and, after costly mistakes, comes to "
            f"understand what it demands of the {role}.",
        }
        for name, role in zip(names, _distinct(_ROLES, len(names)), strict=True)
    ]
    acts = []
    chapter_number = 0
    for stage in _distinct(_ACT_STAGES, c.counts["acts"]):
        chapters = []
        for _ in range(c.counts["chapters_per_act"]):
            pov = names[chapter_number % len(names)]
            chapter_number += 1
            chapters.append(
                {
                    "title": f"Chapter {chapter_number}: {pov} and the {stage}",
                    "summary": f"Seen through {pov}'s eyes, the {stage.lower()} deepens as "
                    f"{c.topic} forces a choice that cannot be undone.",
                    "pov": pov,
                }
            )
        acts.append(
            {
                "title": f"{stage} of {c.topic}",
                "summary": f"In the {stage.lower()}, the characters' relationship with "
                f"{c.topic} is tested and the stakes rise for everyone involved.",
                "chapters": chapters,
            }
        )
    return {
        "title": f"The {c.topic} Chronicles",
        "logline": f"A {c.tone} story for {c.audience} in which {names[0]} must master "
        f"{c.topic} before it costs everything they care about.",
        "characters": characters,
        "acts": acts,
    }


_PHASES = ("requirements", "design", "implementation", "tests", "release", "retrospective")
_ACTIONS = ("Draft", "Review", "Approve")
_OWNERS = ("Product owner", "Engineer", "Reviewer", "QA lead", "Release manager")


def _workflow(c: _Context) -> dict[str, Any]:
    titles = _distinct(
        tuple(f"{action} the {c.topic} {phase}" for phase in _PHASES for action in _ACTIONS),
        c.counts["steps"],
    )
    steps = [
        {
            "id": f"step-{i + 1}",
            "title": title,
            "description": f"{title} so that the next step starts from agreed, checked work; "
            "record decisions where the team can find them.",
            "owner": _OWNERS[i % len(_OWNERS)],
            "depends_on": [f"step-{i}"] if i else [],
        }
        for i, title in enumerate(titles)
    ]
    return {
        "title": f"{c.topic} Delivery Workflow",
        "goal": f"Deliver {c.topic} for {c.audience} through reviewed, dependable steps from "
        "requirements to retrospective.",
        "steps": steps,
    }


_FACETS = (
    "fundamentals",
    "terminology",
    "models",
    "data",
    "tools",
    "workflows",
    "evaluation",
    "ethics",
    "deployment",
    "performance",
    "security",
    "testing",
    "design patterns",
    "history",
    "case studies",
    "limitations",
    "best practices",
    "metrics",
    "collaboration",
    "automation",
    "governance",
    "research",
)


def _knowledge_map(c: _Context) -> dict[str, Any]:
    facets = _distinct(_FACETS, c.counts["concepts"])
    names = [f"{c.topic} {facet}" for facet in facets]
    concepts = [
        {
            "id": f"c{i + 1}",
            "name": name,
            "definition": f"The part of {c.topic} concerned with {facet}, explained so that "
            "newcomers can place it among related ideas.",
        }
        for i, (name, facet) in enumerate(zip(names, facets, strict=True))
    ]
    # A binary tree keeps the map connected with one relation per concept beyond the first.
    relations = []
    for child in range(1, len(concepts)):
        parent = (child - 1) // 2
        kind = RELATION_KINDS[child % len(RELATION_KINDS)]
        relations.append(
            {
                "source": concepts[parent]["id"],
                "target": concepts[child]["id"],
                "kind": kind,
                "description": f"{names[parent]} is {kind.replace('_', ' ')} {names[child]} "
                "in how the field is usually taught.",
            }
        )
    return {
        "title": f"Map of {c.topic}",
        "scope": f"The main concepts of {c.topic} that {c.audience} meet, and how each "
        "builds on or relates to the others.",
        "concepts": concepts,
        "relations": relations,
    }


_MILESTONES = (
    "Get Started with {}",
    "Build Core {} Skills",
    "Practise {} on Real Problems",
    "Deepen Your {} Understanding",
    "Apply {} in a Project",
    "Review and Refine Your {} Work",
    "Share {} with Others",
    "Master Advanced {}",
)


def _learning_path(c: _Context) -> dict[str, Any]:
    milestones = []
    for i, pattern in enumerate(_distinct(_MILESTONES, c.counts["milestones"])):
        title = pattern.format(c.topic)
        n = c.counts["resources_per_milestone"]
        labels = _distinct(tuple(kind.capitalize() for kind in RESOURCE_KINDS), n, shift=i)
        milestones.append(
            {
                "title": title,
                "outcome": f"After this milestone {c.audience} can {title.lower()} with "
                "confidence and explain their choices to others.",
                "duration_hours": 4 + 2 * (i % 3),
                "resources": [
                    {
                        "title": f"{label}: {title}",
                        "kind": kind,
                        "description": f"A {c.tone} {kind} that supports the milestone "
                        f"'{title}' with examples and exercises.",
                    }
                    for label, kind in zip(labels, _cycle(RESOURCE_KINDS, n, shift=i), strict=True)
                ],
            }
        )
    return {
        "title": f"Learning Path: {c.topic}",
        "goal": f"Take {c.audience} from first contact with {c.topic} to applying it "
        "independently in real projects.",
        "milestones": milestones,
    }


_BUILDERS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "course": _course,
    "quiz": _quiz,
    "novel": _novel,
    "workflow": _workflow,
    "knowledge_map": _knowledge_map,
    "learning_path": _learning_path,
}
