"""Offline generation: valid, high-scoring, deterministic structures for every type."""

import pytest

from granulator_server.domain import (
    SEED_TEMPLATES,
    StructureTemplate,
    count_by_kind,
    generate_offline,
    score_quality,
    to_elements,
    validate,
)

TOPIC = "AI Development"
AUDIENCE = "junior developers"


@pytest.mark.parametrize("granularity", [1, 3, 5])
@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_offline_structure_has_no_violations_and_scores_at_least_80(
    template: StructureTemplate, granularity: int
) -> None:
    structure = generate_offline(template, TOPIC, AUDIENCE, granularity, {})
    assert validate(template, structure, granularity) == []
    report = score_quality(template, structure, granularity)
    assert report.score >= 80
    assert report.feedback == ""


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_offline_structure_grows_with_granularity(template: StructureTemplate) -> None:
    sizes = [
        len(
            to_elements(template.structure_type, generate_offline(template, TOPIC, AUDIENCE, g, {}))
        )
        for g in (1, 3, 5)
    ]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_offline_generation_is_deterministic(template: StructureTemplate) -> None:
    first = generate_offline(template, TOPIC, AUDIENCE, 3, {"tone": "calm"})
    assert generate_offline(template, TOPIC, AUDIENCE, 3, {"tone": "calm"}) == first


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_offline_titles_mention_the_topic_and_are_distinct(template: StructureTemplate) -> None:
    structure = generate_offline(template, TOPIC, AUDIENCE, 4, {})
    elements = to_elements(template.structure_type, structure)
    assert TOPIC in elements[0].title
    titles = [e.title for e in elements if e.kind not in ("option", "character", "relation")]
    assert len(titles) == len(set(titles))


def test_offline_course_titles_read_like_a_syllabus() -> None:
    course = generate_offline(SEED_TEMPLATES[0], TOPIC, AUDIENCE, 2, {})
    assert course["modules"][0]["title"] == "Foundations of AI Development"
    assert all(lesson["objectives"] for m in course["modules"] for lesson in m["lessons"])


def test_offline_tone_option_overrides_template_default() -> None:
    course = generate_offline(SEED_TEMPLATES[0], TOPIC, AUDIENCE, 1, {"tone": "playful"})
    assert "playful" in course["summary"]


def test_offline_quiz_rotates_the_correct_option() -> None:
    quiz = generate_offline(SEED_TEMPLATES[1], TOPIC, AUDIENCE, 3, {})
    positions = {
        [o["correct"] for o in question["options"]].index(True) for question in quiz["questions"]
    }
    assert positions == {0, 1, 2, 3}


def test_offline_counts_sit_inside_the_expected_ranges() -> None:
    course = generate_offline(SEED_TEMPLATES[0], TOPIC, AUDIENCE, 3, {})
    kinds = count_by_kind(to_elements("course", course))
    assert kinds == {"course": 1, "module": 4, "lesson": 16, "objective": 48}
