"""A quick yes/no JSON-Schema check for the common subset of keywords, in front of `jsonschema`.

`jsonschema` takes ~0.6 ms to check a 69-element course (pure Python, a validator object per
level of the document), the largest share of the granulator's own CPU per stage. Almost every
structure it checks is valid, so `compile_check` turns a schema that uses only the keywords
below into nested closures that answer only *whether* a value is valid (~20× faster); the caller
asks `jsonschema` for the errors themselves when the answer is no. A schema with any other
keyword (`$ref`, `pattern`, `oneOf`, `const`, `prefixItems`, boolean subschemas …) gets no
quick check (None) and goes to `jsonschema` every time, so the answer never differs from
Draft 2020-12 as `jsonschema` applies it (`tests/granulator/test_quick_schema.py` compares the
two on valid and broken documents).

Understood: `type` (a name or a list of names), `properties`, `required`,
`additionalProperties` (a boolean or a schema), `items` (a schema), `minItems`, `maxItems`,
`minLength`, `maxLength`, `enum` of strings, `minimum`, `maximum`; ignored, as `jsonschema`
ignores them without a format checker: `description`, `title`, `$comment`, `default`,
`examples`, `deprecated`, `readOnly`, `writeOnly`, `format`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "$comment",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",  # an annotation unless a format checker is given, and none is
    }
)
_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "enum",
        "minimum",
        "maximum",
    }
)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int)


#: Draft 2020-12's types as `jsonschema`'s type checker decides them.
_TYPES: dict[str, Check] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "number": _is_number,
    "integer": _is_integer,
}


class _Unsupported(Exception):
    """The schema uses something the quick check does not understand."""


def compile_check(schema: Any) -> Check | None:
    """A function telling whether a value is valid against `schema`, or None when the schema
    uses a keyword the quick check does not understand (then use `jsonschema` alone)."""
    try:
        return _compile(schema)
    except _Unsupported:
        return None


def _count(schema: dict[str, Any], keyword: str) -> int | None:
    value = schema.get(keyword)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Unsupported(keyword)
    return value


def _bound(schema: dict[str, Any], keyword: str) -> Any:
    value = schema.get(keyword)
    if value is not None and not _is_number(value):
        raise _Unsupported(keyword)
    return value


def _compile(schema: Any) -> Check:
    """One closure per schema node: its type test, then the checks of the value's own kind
    (each keyword applies to one kind of value and passes any other), in plain loops."""
    if not isinstance(schema, dict) or not schema.keys() <= _KEYWORDS | _ANNOTATIONS:
        raise _Unsupported(schema)
    kind = schema.get("type")
    if kind is None:
        type_test: Check | None = None
    else:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or not all(n in _TYPES for n in names):
            raise _Unsupported("type")
        tests = [_TYPES[n] for n in names]
        type_test = tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests))
    object_ok = _object_check(schema)
    array_ok = _array_check(schema)
    string_ok = _string_check(schema)
    number_ok = _number_check(schema)
    strings_only = "enum" in schema  # an enum of strings refuses every other kind

    def check(value: Any) -> bool:
        if type_test is not None and not type_test(value):
            return False
        if strings_only and not isinstance(value, str):
            return False
        if isinstance(value, dict):
            return object_ok is None or object_ok(value)
        if isinstance(value, list):
            return array_ok is None or array_ok(value)
        if isinstance(value, str):
            return string_ok is None or string_ok(value)
        if _is_number(value):
            return number_ok is None or number_ok(value)
        return True

    return check


def _object_check(schema: dict[str, Any]) -> Check | None:
    """For a dict: properties, required, additionalProperties."""
    properties = schema.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise _Unsupported("properties")
    compiled = tuple((name, _compile(sub)) for name, sub in (properties or {}).items())
    required = schema.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(n, str) for n in required)
    ):
        raise _Unsupported("required")
    names = tuple(required or ())
    known = frozenset(properties or ())
    extra = schema.get("additionalProperties")
    closed = extra is False
    extra_check = None if extra is None or isinstance(extra, bool) else _compile(extra)
    if not compiled and not names and not closed and extra_check is None:
        return None

    def object_ok(value: dict[str, Any]) -> bool:
        if closed and not value.keys() <= known:
            return False
        for name in names:
            if name not in value:
                return False
        for name, sub in compiled:
            if name in value and not sub(value[name]):
                return False
        if extra_check is not None:
            for key, item in value.items():
                if key not in known and not extra_check(item):
                    return False
        return True

    return object_ok


def _array_check(schema: dict[str, Any]) -> Check | None:
    """For a list: items, minItems, maxItems."""
    item_check = _compile(schema["items"]) if "items" in schema else None
    least, most = _count(schema, "minItems"), _count(schema, "maxItems")
    if item_check is None and least is None and most is None:
        return None

    def array_ok(value: list[Any]) -> bool:
        if least is not None and len(value) < least:
            return False
        if most is not None and len(value) > most:
            return False
        return item_check is None or all(map(item_check, value))

    return array_ok


def _string_check(schema: dict[str, Any]) -> Check | None:
    """For a string: minLength, maxLength, enum."""
    least, most = _count(schema, "minLength"), _count(schema, "maxLength")
    allowed: frozenset[str] | None = None
    if "enum" in schema:
        values = schema["enum"]
        # Strings only: `jsonschema` compares other values with rules of its own (1 ≠ True).
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _Unsupported("enum")
        allowed = frozenset(values)
    if least is None and most is None and allowed is None:
        return None

    def string_ok(value: str) -> bool:
        if least is not None and len(value) < least:
            return False
        if most is not None and len(value) > most:
            return False
        return allowed is None or value in allowed

    return string_ok


def _number_check(schema: dict[str, Any]) -> Check | None:
    """For a number (not a boolean): minimum, maximum."""
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    if low is None and high is None:
        return None

    def number_ok(value: Any) -> bool:
        return (low is None or value >= low) and (high is None or value <= high)

    return number_ok
