"""Seed templates, expected counts, prompt building and template matching."""

import itertools
from dataclasses import replace
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from granulator_server.domain import (
    SEED_TEMPLATES,
    STRUCTURE_TYPES,
    StructureTemplate,
    build_prompt,
    expected_counts,
    generate_offline,
    match_template,
)

COURSE = SEED_TEMPLATES[0]


def _nodes(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found = [schema]
    for sub in schema.get("properties", {}).values():
        found += _nodes(sub)
    if "items" in schema:
        found += _nodes(schema["items"])
    return found


def _objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in _nodes(schema) if node["type"] == "object"]


def test_there_is_one_standard_seed_per_structure_type() -> None:
    assert [t.structure_type for t in SEED_TEMPLATES] == list(STRUCTURE_TYPES)
    assert [t.name for t in SEED_TEMPLATES] == [f"{t}_standard" for t in STRUCTURE_TYPES]


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_seed_schema_is_valid_draft_2020_12_and_strict(template: StructureTemplate) -> None:
    Draft202012Validator.check_schema(template.json_schema)
    for obj in _objects(template.json_schema):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_seed_schema_bounds_every_string_and_array_above_what_the_rules_ask(
    template: StructureTemplate,
) -> None:
    nodes = _nodes(template.json_schema)
    assert all(n["maxLength"] > 0 for n in nodes if n["type"] == "string" and "enum" not in n)
    assert all(n["maxItems"] > 0 for n in nodes if n["type"] == "array")
    for rule in template.rules.counts:
        array = template.json_schema
        for part in rule.path.split("/"):
            array = array["items"] if part == "*" else array["properties"][part]
        assert array["maxItems"] >= max(hi for _, hi in rule.by_granularity)
    longest_topic = " ".join(["Distributed systems"] * 25)[:500]  # KAM's limit
    largest = generate_offline(template, longest_topic, "engineers", 5, {})
    assert list(Draft202012Validator(template.json_schema).iter_errors(largest)) == []


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_expected_counts_never_shrink_as_granularity_rises(template: StructureTemplate) -> None:
    by_level = [expected_counts(template, g) for g in range(1, 6)]
    for coarser, finer in itertools.pairwise(by_level):
        for name, (lo, hi) in coarser.items():
            assert finer[name][0] >= lo and finer[name][1] >= hi
            assert 0 < lo <= hi


@pytest.mark.parametrize("granularity", [0, 6])
def test_expected_counts_rejects_granularity_outside_one_to_five(granularity: int) -> None:
    with pytest.raises(ValueError, match="granularity"):
        expected_counts(COURSE, granularity)


def test_build_prompt_names_topic_audience_counts_constraints_and_options() -> None:
    system, user = build_prompt(
        COURSE, "AI Development", "junior developers", 3, {"max_words": "200"}, {"tone": "warm"}
    )
    assert "course" in system and "JSON" in system
    assert "AI Development" in user and "junior developers" in user
    assert "- modules: 4-5" in user and "- lessons per module: 3-5" in user
    assert "- max_words: 200" in user
    assert "- tone: warm" in user and "- language: English" in user
    assert "rejected" not in user


def test_build_prompt_appends_feedback_from_a_failed_attempt() -> None:
    _, user = build_prompt(COURSE, "AI", "devs", 1, {}, {}, feedback="- /modules: too few")
    assert user.endswith("- /modules: too few")
    assert "previous attempt was rejected" in user


def _named(name: str, structure_type: str) -> StructureTemplate:
    return replace(COURSE, name=name, structure_type=structure_type)


MATCHABLE = (
    _named("quiz_standard", "quiz"),
    _named("course_standard", "course"),
    _named("course_advanced", "course"),
    _named("quiz", "course"),
)


def test_match_template_prefers_exact_name_over_structure_type() -> None:
    assert match_template(MATCHABLE, "quiz") == MATCHABLE[3]
    assert match_template(MATCHABLE, "Course_Standard") == MATCHABLE[1]


def test_match_template_by_structure_type_takes_first_name_in_order() -> None:
    assert match_template(MATCHABLE, "course") == MATCHABLE[2]


def test_match_template_falls_back_to_partial_name() -> None:
    assert match_template(MATCHABLE, "STAND") == MATCHABLE[1]
    assert match_template(MATCHABLE, "advanced") == MATCHABLE[2]


def test_match_template_normalises_spaces_and_hyphens() -> None:
    assert match_template(SEED_TEMPLATES, "Knowledge map") == SEED_TEMPLATES[4]
    assert match_template(SEED_TEMPLATES, "learning-path") == SEED_TEMPLATES[5]


@pytest.mark.parametrize("query", ["", "   ", "poem"])
def test_match_template_returns_none_without_a_match(query: str) -> None:
    assert match_template(MATCHABLE, query) is None
