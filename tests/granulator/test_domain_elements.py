"""Flattening structures into pre-order elements with parent links."""

import pytest

from granulator_server.domain import (
    SEED_TEMPLATES,
    StructureTemplate,
    count_by_kind,
    generate_offline,
    to_elements,
)

PARENT_KIND = {
    "module": "course",
    "lesson": "module",
    "objective": "lesson",
    "question": "quiz",
    "option": "question",
    "character": "novel",
    "act": "novel",
    "chapter": "act",
    "step": "workflow",
    "concept": "knowledge_map",
    "relation": "knowledge_map",
    "milestone": "learning_path",
    "resource": "milestone",
}


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_elements_form_one_preorder_tree_with_valid_parent_links(
    template: StructureTemplate,
) -> None:
    structure = generate_offline(template, "Rust", "students", 3, {})
    elements = to_elements(template.structure_type, structure)

    assert [e.index for e in elements] == list(range(len(elements)))
    assert [e for e in elements if e.parent_index == -1] == [elements[0]]
    assert elements[0].kind == template.structure_type
    assert elements[0].title == structure["title"]
    for element in elements[1:]:
        assert element.parent_index < element.index
        assert elements[element.parent_index].kind == PARENT_KIND[element.kind]
    siblings = [(e.parent_index, e.order) for e in elements]
    assert len(siblings) == len(set(siblings))


def test_course_elements_count_every_module_lesson_and_objective() -> None:
    course = generate_offline(SEED_TEMPLATES[0], "Rust", "students", 1, {})
    elements = to_elements("course", course)
    lessons = [lesson for module in course["modules"] for lesson in module["lessons"]]
    assert count_by_kind(elements) == {
        "course": 1,
        "module": len(course["modules"]),
        "lesson": len(lessons),
        "objective": sum(len(lesson["objectives"]) for lesson in lessons),
    }


def test_objective_titles_are_the_objective_text_under_their_lesson() -> None:
    course = generate_offline(SEED_TEMPLATES[0], "Rust", "students", 2, {})
    elements = to_elements("course", course)
    first_lesson = course["modules"][0]["lessons"][0]
    objectives = [e for e in elements if e.kind == "objective" and e.parent_index == 2]
    assert [e.title for e in objectives] == first_lesson["objectives"]
    assert [e.order for e in objectives] == list(range(len(objectives)))
    assert elements[2].title == first_lesson["title"]


def test_payload_keeps_scalar_fields_but_not_children_or_title() -> None:
    workflow = generate_offline(SEED_TEMPLATES[3], "Rust", "students", 1, {})
    step = to_elements("workflow", workflow)[2]
    assert step.payload == {
        "id": "step-2",
        "description": workflow["steps"][1]["description"],
        "owner": workflow["steps"][1]["owner"],
        "depends_on": ["step-1"],
    }
    quiz = to_elements("quiz", generate_offline(SEED_TEMPLATES[1], "Rust", "students", 1, {}))
    assert set(quiz[1].payload) == {"difficulty", "explanation"}
    assert set(quiz[2].payload) == {"correct"}


def test_order_runs_across_all_lists_of_a_parent() -> None:
    novel = generate_offline(SEED_TEMPLATES[2], "Rust", "students", 1, {})
    children = [e for e in to_elements("novel", novel) if e.parent_index == 0]
    assert [e.kind for e in children] == ["character"] * len(novel["characters"]) + ["act"] * len(
        novel["acts"]
    )
    assert [e.order for e in children] == list(range(len(children)))


def test_missing_lists_yield_only_the_root() -> None:
    elements = to_elements("learning_path", {"title": "Empty"})
    assert [(e.kind, e.title, e.parent_index) for e in elements] == [("learning_path", "Empty", -1)]


def test_unknown_structure_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="poem"):
        to_elements("poem", {})
