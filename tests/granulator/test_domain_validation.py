"""Validation rules and the quality score: each rule fires, good beats degenerate."""

import copy
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from granulator_server.domain import (
    SEED_TEMPLATES,
    StructureTemplate,
    generate_offline,
    match_template,
    score_quality,
    validate,
)
from granulator_server.domain.validation import WEIGHTS

GRANULARITY = 3
Structure = dict[str, Any]


def _template(structure_type: str) -> StructureTemplate:
    template = match_template(SEED_TEMPLATES, structure_type)
    assert template is not None
    return template


def _good(structure_type: str) -> Structure:
    return generate_offline(
        _template(structure_type), "AI Development", "junior developers", GRANULARITY, {}
    )


def _mutated(structure_type: str, mutate: Callable[[Structure], None]) -> Structure:
    structure = copy.deepcopy(_good(structure_type))
    mutate(structure)
    return structure


def _rules_at(structure_type: str, structure: Structure) -> set[tuple[str, str]]:
    violations = validate(_template(structure_type), structure, GRANULARITY)
    return {(v.rule, v.path) for v in violations}


def _score(structure_type: str, structure: Structure) -> float:
    return score_quality(_template(structure_type), structure, GRANULARITY).score


# --- mutations that make a good structure degenerate ----------------------------------------


def _duplicate_modules(course: Structure) -> None:
    course["modules"] = [copy.deepcopy(course["modules"][0]) for _ in course["modules"]]


def _empty_lessons(course: Structure) -> None:
    for module in course["modules"]:
        for lesson in module["lessons"]:
            lesson["summary"] = ""
            lesson["objectives"] = []


def _single_giant_branch(course: Structure) -> None:
    modules = course["modules"]
    modules[0]["lessons"] = [lesson for m in modules for lesson in m["lessons"]]
    for module in modules[1:]:
        module["lessons"] = []


def _missing_objectives(course: Structure) -> None:
    for module in course["modules"]:
        for lesson in module["lessons"]:
            lesson["objectives"] = []


def _too_few_modules(course: Structure) -> None:
    course["modules"] = course["modules"][:1]


def _all_easy(quiz: Structure) -> None:
    for question in quiz["questions"]:
        question["difficulty"] = "easy"


def _workflow_cycle(workflow: Structure) -> None:
    workflow["steps"][0]["depends_on"] = [workflow["steps"][-1]["id"]]


def _dangling_relation(knowledge_map: Structure) -> None:
    knowledge_map["relations"][0]["target"] = "c999"


def _uneven_but_in_range(course: Structure) -> None:
    # A plausible hand-written course: lesson counts 3, 5, 4, 4 (range 3-5), one terse summary.
    moved = course["modules"][0]["lessons"].pop()
    moved["title"] = "Bridging Lesson on Deployment"
    moved["objectives"] = ["Deploy a small model", "Monitor it after release", "Roll it back"]
    course["modules"][1]["lessons"].append(moved)
    course["modules"][2]["summary"] = "Tools and techniques for AI features."


DEGENERATE = {
    "duplicate_modules": ("course", _duplicate_modules),
    "empty_lessons": ("course", _empty_lessons),
    "single_giant_branch": ("course", _single_giant_branch),
    "missing_objectives": ("course", _missing_objectives),
    "too_few_modules": ("course", _too_few_modules),
    "quiz_all_easy": ("quiz", _all_easy),
    "workflow_cycle": ("workflow", _workflow_cycle),
    "dangling_relation": ("knowledge_map", _dangling_relation),
}


def _good_scores() -> list[float]:
    offline = [_score(t.structure_type, _good(t.structure_type)) for t in SEED_TEMPLATES]
    return [*offline, _score("course", _mutated("course", _uneven_but_in_range))]


@pytest.mark.parametrize("name", DEGENERATE)
def test_degenerate_structure_scores_at_most_fifty(name: str) -> None:
    structure_type, mutate = DEGENERATE[name]
    assert _score(structure_type, _mutated(structure_type, mutate)) <= 50


def test_every_good_structure_scores_above_every_degenerate_one() -> None:
    degenerate = [_score(t, _mutated(t, mutate)) for t, mutate in DEGENERATE.values()]
    assert min(_good_scores()) >= 80
    assert min(_good_scores()) > max(degenerate)


def test_uneven_but_in_range_course_still_scores_above_eighty() -> None:
    report = score_quality(
        _template("course"), _mutated("course", _uneven_but_in_range), GRANULARITY
    )
    assert report.violations == []
    assert report.score >= 80
    assert report.components["detail"] < 1
    assert "under 8 words" in report.feedback


def test_a_structure_the_provider_checked_scores_the_same_without_a_second_schema_check() -> None:
    for template in SEED_TEMPLATES:
        structure = _good(template.structure_type)
        checked = score_quality(template, structure, GRANULARITY, schema_checked=True)
        assert checked == score_quality(template, structure, GRANULARITY)


def test_components_are_fractions_with_weights_summing_to_one() -> None:
    report = score_quality(_template("course"), _mutated("course", _empty_lessons), GRANULARITY)
    assert set(report.components) == set(WEIGHTS)
    assert all(0.0 <= value <= 1.0 for value in report.components.values())
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_duplicate_modules_score_below_fifty_with_low_uniqueness() -> None:
    report = score_quality(_template("course"), _mutated("course", _duplicate_modules), GRANULARITY)
    assert report.score < 50
    assert report.components["uniqueness"] == pytest.approx(0.25)


def test_feedback_lists_paths_to_fix_and_balance_advice() -> None:
    report = score_quality(
        _template("course"), _mutated("course", _single_giant_branch), GRANULARITY
    )
    assert "- /modules/2/lessons: expected 3-5 lessons per module, found 0" in report.feedback
    assert "lessons per module vary too much" in report.feedback


@pytest.mark.parametrize("lessons", [(4, 4, 4, 4), (3, 4, 5, 4), (1, 5, 5, 5), (1, 1, 9, 1)])
def test_balance_is_the_formula_s_value_with_and_without_spread(lessons: tuple[int, ...]) -> None:
    def resize(course: Structure) -> None:
        modules = course["modules"] = [copy.deepcopy(course["modules"][0]) for _ in lessons]
        for module, count in zip(modules, lessons, strict=True):
            module["lessons"] = [copy.deepcopy(module["lessons"][0]) for _ in range(count)]

    report = score_quality(_template("course"), _mutated("course", resize), GRANULARITY)
    spread = statistics.pstdev(lessons) / statistics.fmean(lessons)
    assert report.components["balance"] == 1.0 - min(1.0, max(0.0, spread - 0.25) / 0.75)
    assert ("lessons per module vary too much" in report.feedback) == (spread > 0.25)


def test_feedback_is_capped_for_many_violations() -> None:
    report = score_quality(_template("course"), _mutated("course", _empty_lessons), GRANULARITY)
    assert len(report.feedback.splitlines()) <= 17
    assert "more like these" in report.feedback


# --- each rule produces its violation -------------------------------------------------------


def test_missing_and_extra_fields_are_schema_violations() -> None:
    def break_schema(course: Structure) -> None:
        del course["modules"][1]["summary"]
        course["modules"][0]["extra"] = 1

    rules = _rules_at("course", _mutated("course", break_schema))
    assert ("schema", "/modules/0") in rules and ("schema", "/modules/1") in rules


def test_blank_title_is_a_required_violation() -> None:
    def blank(course: Structure) -> None:
        course["modules"][2]["lessons"][1]["title"] = "  "

    assert ("required", "/modules/2/lessons/1/title") in _rules_at(
        "course", _mutated("course", blank)
    )


def test_zero_duration_is_a_required_violation() -> None:
    def zero(path: Structure) -> None:
        path["milestones"][0]["duration_hours"] = 0

    rules = _rules_at("learning_path", _mutated("learning_path", zero))
    assert rules == {("required", "/milestones/0/duration_hours")}


def test_one_module_short_is_a_count_range_violation() -> None:
    def one_short(course: Structure) -> None:
        course["modules"] = course["modules"][:3]  # granularity 3 wants 4-5

    structure = _mutated("course", one_short)
    assert _rules_at("course", structure) == {("count_range", "/modules")}
    assert not score_quality(_template("course"), structure, GRANULARITY).integrity_failures


def test_far_too_few_modules_break_the_hard_limit() -> None:
    structure = _mutated("course", _too_few_modules)  # 1 module, 4-5 wanted: under half
    assert _rules_at("course", structure) == {("count_hard_limit", "/modules")}
    report = score_quality(_template("course"), structure, GRANULARITY)
    assert [v.rule for v in report.integrity_failures] == ["count_hard_limit"]


def test_far_too_many_modules_break_the_hard_limit() -> None:
    def eleven(course: Structure) -> None:  # granularity 3 allows 5; 11 is over twice that
        course["modules"] = [copy.deepcopy(course["modules"][0]) for _ in range(11)]
        for index, module in enumerate(course["modules"]):
            module["title"] = f"Module number {index}"

    rules = _rules_at("course", _mutated("course", eleven))
    assert ("count_hard_limit", "/modules") in rules


def test_missing_objectives_break_the_hard_limit() -> None:
    rules = _rules_at("course", _mutated("course", _missing_objectives))
    assert ("count_hard_limit", "/modules/0/lessons/0/objectives") in rules
    assert {rule for rule, _ in rules} == {"count_hard_limit"}


def test_every_option_correct_is_an_integrity_failure() -> None:
    def all_correct(quiz: Structure) -> None:
        for question in quiz["questions"]:
            for option in question["options"]:
                option["correct"] = True

    report = score_quality(_template("quiz"), _mutated("quiz", all_correct), GRANULARITY)
    assert report.integrity_failures
    assert {v.rule for v in report.integrity_failures} == {"single_correct"}


def test_soft_problems_are_not_integrity_failures() -> None:
    def repeat_objectives(course: Structure) -> None:
        for module in course["modules"]:
            for lesson in module["lessons"]:
                lesson["objectives"] = ["Understand it"] * len(lesson["objectives"])

    report = score_quality(_template("course"), _mutated("course", repeat_objectives), GRANULARITY)
    assert report.score < 60
    assert report.integrity_failures == []


def test_a_good_structure_has_no_integrity_failures() -> None:
    for structure_type in ("course", "quiz", "workflow", "novel"):
        report = score_quality(_template(structure_type), _good(structure_type), GRANULARITY)
        assert report.integrity_failures == [], structure_type


def test_repeated_lesson_title_in_another_module_is_a_duplicate() -> None:
    def repeat(course: Structure) -> None:
        course["modules"][3]["lessons"][0]["title"] = course["modules"][0]["lessons"][0]["title"]

    rules = _rules_at("course", _mutated("course", repeat))
    assert rules == {("duplicate_title", "/modules/3/lessons/0/title")}


def test_same_option_text_in_different_questions_is_allowed() -> None:
    def share(quiz: Structure) -> None:
        quiz["questions"][1]["options"][3]["text"] = quiz["questions"][0]["options"][3]["text"]

    assert _rules_at("quiz", _mutated("quiz", share)) == set()


def test_two_correct_options_break_the_single_correct_rule() -> None:
    def two_correct(quiz: Structure) -> None:
        for option in quiz["questions"][2]["options"][:2]:
            option["correct"] = True

    assert _rules_at("quiz", _mutated("quiz", two_correct)) == {
        ("single_correct", "/questions/2/options")
    }


def test_all_easy_quiz_breaks_the_difficulty_mix() -> None:
    violations = validate(_template("quiz"), _mutated("quiz", _all_easy), GRANULARITY)
    assert [(v.rule, v.path) for v in violations] == [("difficulty_mix", "/questions")] * 2
    assert "'medium' makes up 0%" in violations[0].message


def test_unknown_dependency_is_a_dangling_reference() -> None:
    def dangle(workflow: Structure) -> None:
        workflow["steps"][2]["depends_on"] = ["step-99"]

    rules = _rules_at("workflow", _mutated("workflow", dangle))
    assert rules == {("dangling_reference", "/steps/2/depends_on/0")}


def test_unknown_point_of_view_character_is_a_dangling_reference() -> None:
    def stranger(novel: Structure) -> None:
        novel["acts"][0]["chapters"][0]["pov"] = "Nobody Known"

    rules = _rules_at("novel", _mutated("novel", stranger))
    assert rules == {("dangling_reference", "/acts/0/chapters/0/pov")}


def test_relation_to_missing_concept_is_a_dangling_reference() -> None:
    rules = _rules_at("knowledge_map", _mutated("knowledge_map", _dangling_relation))
    assert rules == {("dangling_reference", "/relations/0/target")}


def test_reference_that_is_not_a_string_is_dangling_not_a_crash() -> None:
    # Only schema-valid structures are scored today, but a provider that returns unchecked
    # documents must get a violation here, not a TypeError that fails the stage as INTERNAL.
    def listed(knowledge_map: Structure) -> None:
        knowledge_map["relations"][0]["source"] = ["c1", "c2"]

    rules = _rules_at("knowledge_map", _mutated("knowledge_map", listed))
    assert ("dangling_reference", "/relations/0/source") in rules  # beside its schema error


def test_workflow_cycle_is_reported_once_with_its_path() -> None:
    violations = validate(_template("workflow"), _mutated("workflow", _workflow_cycle), 3)
    # The search starts at step-1 and closes the loop at step-2, which depends on step-1.
    assert [(v.rule, v.path) for v in violations] == [("cycle", "/steps/1")]
    assert violations[0].message.endswith(
        "step-1 -> step-8 -> step-7 -> step-6 -> step-5 -> step-4 -> step-3 -> step-2 -> step-1"
    )


def test_step_depending_on_itself_is_a_cycle() -> None:
    def self_loop(workflow: Structure) -> None:
        workflow["steps"][0]["depends_on"] = ["step-1"]

    assert _rules_at("workflow", _mutated("workflow", self_loop)) == {("cycle", "/steps/0")}


def test_structure_that_is_not_an_object_scores_zero() -> None:
    report = score_quality(_template("novel"), [], GRANULARITY)  # type: ignore[arg-type]
    assert report.score == 0
    assert report.violations[0].rule == "schema"
