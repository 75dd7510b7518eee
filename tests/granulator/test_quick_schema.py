"""The quick schema check (`domain.quick_schema`) answers as `jsonschema` does, on valid and broken
documents of every seed template and on hand-made schemas; schemas it does not understand go to
`jsonschema`; and its cache (`validation.quick_check`) never hands one schema's check to another."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from granulator_server.domain import SEED_TEMPLATES, generate_offline
from granulator_server.domain.quick_schema import compile_check
from granulator_server.domain.validation import QUICK_KEPT, quick_check, schema_errors


def valid_by_jsonschema(schema: dict[str, Any], value: Any) -> bool:
    return not list(Draft202012Validator(schema).iter_errors(value))


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


_REPLACEMENTS: list[Any] = [
    None,
    True,
    0,
    1.0,
    2.5,
    "",
    "x" * 3000,
    "easy",
    "nope",
    [],
    ["a"],
    {},
    {"unexpected": 1},
]


def _broken(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`document` with one random part replaced, removed, or given an extra key or item."""
    broken = copy.deepcopy(document)
    path = rng.choice(_paths(broken)[1:])
    *parents, last = path
    holder: Any = broken
    for part in parents:
        holder = holder[part]
    move = rng.randrange(4)
    if move == 0:
        holder[last] = rng.choice(_REPLACEMENTS)
    elif move == 1:
        del holder[last]
    elif move == 2 and isinstance(holder[last], dict):
        holder[last]["extra_field"] = "x"
    elif move == 2 and isinstance(holder[last], list):
        holder[last].extend(copy.deepcopy(holder[last][:1]) * 60)
    else:
        holder[last] = rng.choice(_REPLACEMENTS)
    return broken


@pytest.mark.parametrize("template", SEED_TEMPLATES, ids=lambda t: t.name)
def test_seed_templates_agree_with_jsonschema(template: Any) -> None:
    check = compile_check(template.json_schema)
    assert check is not None  # the seed schemas use only understood keywords
    rng = random.Random(template.name)
    for granularity in range(1, 6):
        document = generate_offline(template, "Quick Checks", "testers", granularity, {})
        assert check(document) and valid_by_jsonschema(template.json_schema, document)
        for _ in range(60):
            broken = _broken(document, rng)
            assert check(broken) == valid_by_jsonschema(template.json_schema, broken), broken
    assert not check([]) and not check("text") and not check(None)


@pytest.mark.parametrize(
    ("schema", "values"),
    [
        ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None, -3]),
        ({"type": "number"}, [1, 1.5, True, False, "1.5", None]),
        ({"type": ["string", "null"]}, ["a", None, 0, [], {}]),
        ({"type": "boolean"}, [True, False, 0, 1, "true"]),
        ({"minimum": 2, "maximum": 5}, [1, 2, 5, 5.5, "9", True, None]),
        ({"minLength": 2, "maxLength": 3}, ["a", "ab", "abc", "abcd", "é" * 3, 12345]),
        ({"minItems": 1, "maxItems": 2}, [[], [1], [1, 2], [1, 2, 3], "ab"]),
        ({"enum": ["a", "b"]}, ["a", "c", 1, None, ["a"]]),
        ({"required": ["a"], "properties": {"a": {"type": "string"}}}, [{}, {"a": 1}, [], 3]),
        (
            {"properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
            [{"a": "x", "b": 1}, {"b": "x"}, {}, "s"],
        ),
        ({"additionalProperties": False}, [{}, {"a": 1}, [1]]),
        ({"items": {"type": "string"}}, [["a"], ["a", 1], [], {"0": 1}]),
        ({"description": "anything", "format": "email"}, ["not an email", 3, None]),
    ],
)
def test_keywords_agree_with_jsonschema(schema: dict[str, Any], values: list[Any]) -> None:
    check = compile_check(schema)
    assert check is not None
    for value in values:
        assert check(value) == valid_by_jsonschema(schema, value), value


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}},
        {"type": "string", "pattern": "^a"},
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        {"const": 1},
        {"enum": [1, True]},
        {"prefixItems": [{"type": "string"}]},
        {"items": True},
        {"type": "object", "properties": {"a": {"type": "string", "uniqueItems": True}}},
        {"maxLength": 2.5},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
    ],
)
def test_schemas_it_does_not_understand_go_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_check(schema) is None
    assert quick_check(schema) is None
    # schema_errors still answers, from jsonschema alone
    assert schema_errors(schema, "a") == [
        ("".join(f"/{p}" for p in e.absolute_path), e.message)
        for e in Draft202012Validator(schema).iter_errors("a")
    ]


def test_an_unknown_type_is_left_to_jsonschema() -> None:
    assert compile_check({"type": "decimal"}) is None
    assert compile_check({"properties": {"a": {"type": ["string", "decimal"]}}}) is None


def test_errors_are_jsonschema_s_when_the_quick_check_says_no() -> None:
    template = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
    document = generate_offline(template, "Errors", "testers", 2, {})
    document["modules"][0]["title"] = "x" * 800
    del document["summary"]
    errors = schema_errors(template.json_schema, document)
    assert len(errors) == 2
    assert {path for path, _ in errors} == {"", "/modules/0/title"}


def test_the_cache_never_gives_one_schema_s_check_to_another() -> None:
    short = {"type": "string", "maxLength": 3}
    long = {"type": "string", "maxLength": 30}
    assert schema_errors(short, "abcdef") and not schema_errors(long, "abcdef")
    assert quick_check(short) is quick_check(short)
    assert quick_check(short) is not quick_check(long)
    # Past QUICK_KEPT schemas the oldest entries go, and their schemas with them; a new
    # object that then gets a dropped schema's identity does not find the dropped one's check.
    for length in range(QUICK_KEPT + 100):
        schema = {"type": "string", "maxLength": length}
        assert bool(schema_errors(schema, "x" * 100)) == (length < 100)
        del schema
