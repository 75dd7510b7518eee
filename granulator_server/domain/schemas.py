"""JSON schemas of the six structure types, in OpenAI's strict structured-output subset.

Every object lists all its properties as required and forbids additional ones; item counts are
left to the template rules because strict mode does not accept ``minItems`` everywhere. The
``description`` of each property doubles as guidance for the model.

Every string has a ``maxLength`` and every array a ``maxItems``, well above what the rules ask
for at granularity 5: a grammar-constrained local model that starts repeating itself is stopped
by the grammar instead of running to the token limit. (OpenAI's strict mode does not take
``maxLength``; `providers.formats` leaves it out there, and our own validation applies it.)
"""

from __future__ import annotations

from typing import Any

DIFFICULTIES = ("easy", "medium", "hard")
RELATION_KINDS = ("prerequisite_of", "part_of", "related_to", "example_of")
RESOURCE_KINDS = ("article", "video", "exercise", "book", "project")


#: Characters of a title, name, id or role (a title may quote a topic of up to 500); of text.
SHORT, LONG = 700, 2000


def _text(description: str, max_length: int = LONG) -> dict[str, Any]:
    return {"type": "string", "description": description, "maxLength": max_length}


def _name(description: str) -> dict[str, Any]:
    return _text(description, SHORT)


def _choice(description: str, values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values), "description": description}


def _list(description: str, items: dict[str, Any], max_items: int) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": items, "maxItems": max_items}


def _object(description: str, properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def leaf_patterns(schema: dict[str, Any], prefix: str = "") -> tuple[str, ...]:
    """Patterns of every text and number leaf: all of them must be non-empty."""
    kind = schema["type"]
    if kind == "object":
        return tuple(
            pattern
            for key, sub in schema["properties"].items()
            for pattern in leaf_patterns(sub, f"{prefix}{key}/")
        )
    if kind == "array":
        return leaf_patterns(schema["items"], f"{prefix}*/")
    return (prefix.rstrip("/"),) if kind in ("string", "number") else ()


COURSE_SCHEMA = _object(
    "A course split into modules and lessons.",
    {
        "title": _name("Course title."),
        "summary": _text("What the course covers and who it helps."),
        "modules": _list(
            "Modules in teaching order.",
            _object(
                "A module: one coherent theme.",
                {
                    "title": _name("Module title, distinct within the course."),
                    "summary": _text("What the module covers."),
                    "lessons": _list(
                        "Lessons in teaching order.",
                        _object(
                            "A lesson.",
                            {
                                "title": _name("Lesson title, distinct within the course."),
                                "summary": _text("What the lesson teaches."),
                                "objectives": _list(
                                    "Measurable learning objectives.",
                                    _text("One objective, starting with a verb."),
                                    8,
                                ),
                            },
                        ),
                        10,
                    ),
                },
            ),
            12,
        ),
    },
)


QUIZ_SCHEMA = _object(
    "A multiple-choice quiz.",
    {
        "title": _name("Quiz title."),
        "instructions": _text("Instructions shown to the learner."),
        "questions": _list(
            "Questions, roughly from easy to hard.",
            _object(
                "A question with four options.",
                {
                    "prompt": _text("The question, distinct within the quiz."),
                    "difficulty": _choice("How hard the question is.", DIFFICULTIES),
                    "options": _list(
                        "Exactly four answer options.",
                        _object(
                            "An answer option.",
                            {
                                "text": _text("Option text, distinct within the question."),
                                "correct": {"type": "boolean", "description": "Is it right?"},
                            },
                        ),
                        6,
                    ),
                    "explanation": _text("Why the correct option is right."),
                },
            ),
            30,
        ),
    },
)


NOVEL_SCHEMA = _object(
    "A novel outline.",
    {
        "title": _name("Working title."),
        "logline": _text("The story in one or two sentences."),
        "characters": _list(
            "Main characters.",
            _object(
                "A character.",
                {
                    "name": _name("Full name, distinct."),
                    "role": _name("Role in the story, e.g. protagonist or mentor."),
                    "arc": _text("How the character changes over the story."),
                },
            ),
            12,
        ),
        "acts": _list(
            "Acts in story order.",
            _object(
                "An act.",
                {
                    "title": _name("Act title, distinct."),
                    "summary": _text("What happens in the act."),
                    "chapters": _list(
                        "Chapters in story order.",
                        _object(
                            "A chapter.",
                            {
                                "title": _name("Chapter title, distinct within the novel."),
                                "summary": _text("What happens in the chapter."),
                                "pov": _name("Name of the point-of-view character."),
                            },
                        ),
                        12,
                    ),
                },
            ),
            8,
        ),
    },
)


WORKFLOW_SCHEMA = _object(
    "A workflow of dependent steps.",
    {
        "title": _name("Workflow title."),
        "goal": _text("What the workflow achieves."),
        "steps": _list(
            "Steps; a step may start once the steps it depends on are done.",
            _object(
                "A step.",
                {
                    "id": _name("Short unique id, e.g. step-1."),
                    "title": _name("Step title, distinct."),
                    "description": _text("What is done in this step."),
                    "owner": _name("Role responsible for the step."),
                    "depends_on": _list("Ids of earlier steps.", _name("A step id."), 10),
                },
            ),
            30,
        ),
    },
)


KNOWLEDGE_MAP_SCHEMA = _object(
    "A map of concepts and the relations between them.",
    {
        "title": _name("Map title."),
        "scope": _text("What the map covers."),
        "concepts": _list(
            "Concepts.",
            _object(
                "A concept.",
                {
                    "id": _name("Short unique id, e.g. c1."),
                    "name": _name("Concept name, distinct."),
                    "definition": _text("A definition in plain words."),
                },
            ),
            36,
        ),
        "relations": _list(
            "Directed relations between concepts.",
            _object(
                "A relation: source <kind> target.",
                {
                    "source": _name("Id of the source concept."),
                    "target": _name("Id of the target concept."),
                    "kind": _choice("Kind of relation.", RELATION_KINDS),
                    "description": _text("The relation in one sentence."),
                },
            ),
            54,
        ),
    },
)


LEARNING_PATH_SCHEMA = _object(
    "A learning path of milestones.",
    {
        "title": _name("Path title."),
        "goal": _text("What the learner can do at the end."),
        "milestones": _list(
            "Milestones in order.",
            _object(
                "A milestone.",
                {
                    "title": _name("Milestone title, distinct."),
                    "outcome": _text("What the learner can do after it."),
                    "duration_hours": {"type": "number", "description": "Estimated hours."},
                    "resources": _list(
                        "Resources to work through.",
                        _object(
                            "A resource.",
                            {
                                "title": _name("Resource title, distinct within the path."),
                                "kind": _choice("Kind of resource.", RESOURCE_KINDS),
                                "description": _text("What the resource offers."),
                            },
                        ),
                        9,
                    ),
                },
            ),
            15,
        ),
    },
)
