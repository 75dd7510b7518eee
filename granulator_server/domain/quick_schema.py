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
    if not isinstance(schema, dict) or not schema.keys() <= _KEYWORDS | _ANNOTATIONS:
        raise _Unsupported(schema)
    checks: list[Check] = []

    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or not all(n in _TYPES for n in names):
            raise _Unsupported("type")
        tests = [_TYPES[n] for n in names]
        if len(tests) == 1:
            checks.append(tests[0])
        else:
            checks.append(lambda value: any(test(value) for test in tests))

    checks.extend(_object_checks(schema))
    checks.extend(_array_checks(schema))
    checks.extend(_string_checks(schema))
    checks.extend(_number_checks(schema))

    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _object_checks(schema: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            raise _Unsupported("properties")
        compiled = [(name, _compile(sub)) for name, sub in properties.items()]

        def properties_valid(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            return all(name not in value or check(value[name]) for name, check in compiled)

        checks.append(properties_valid)
    required = schema.get("required")
    if required is not None:
        if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
            raise _Unsupported("required")
        names = tuple(required)
        checks.append(lambda value: not isinstance(value, dict) or all(n in value for n in names))
    extra = schema.get("additionalProperties")
    if extra is not None:
        known = frozenset(properties or ())
        if extra is True:
            pass
        elif extra is False:
            checks.append(lambda value: not isinstance(value, dict) or value.keys() <= known)
        else:
            extra_check = _compile(extra)

            def extra_valid(value: Any) -> bool:
                if not isinstance(value, dict):
                    return True
                return all(extra_check(v) for k, v in value.items() if k not in known)

            checks.append(extra_valid)
    return checks


def _array_checks(schema: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    if "items" in schema:
        item_check = _compile(schema["items"])
        checks.append(
            lambda value: not isinstance(value, list) or all(item_check(item) for item in value)
        )
    least, most = _count(schema, "minItems"), _count(schema, "maxItems")
    if least is not None:
        checks.append(lambda value: not isinstance(value, list) or len(value) >= least)
    if most is not None:
        checks.append(lambda value: not isinstance(value, list) or len(value) <= most)
    return checks


def _string_checks(schema: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    least, most = _count(schema, "minLength"), _count(schema, "maxLength")
    if least is not None:
        checks.append(lambda value: not isinstance(value, str) or len(value) >= least)
    if most is not None:
        checks.append(lambda value: not isinstance(value, str) or len(value) <= most)
    if "enum" in schema:
        values = schema["enum"]
        # Strings only: `jsonschema` compares other values with rules of its own (1 ≠ True).
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _Unsupported("enum")
        allowed = frozenset(values)
        checks.append(lambda value: isinstance(value, str) and value in allowed)
    return checks


def _number_checks(schema: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    if low is not None:
        checks.append(lambda value: not _is_number(value) or value >= low)
    if high is not None:
        checks.append(lambda value: not _is_number(value) or value <= high)
    return checks
