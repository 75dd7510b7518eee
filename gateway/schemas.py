"""OpenAPI schemas for protobuf answers, derived from the message descriptors, so /docs shows
exactly what `calls.message_json` produces and cannot drift from the protos.

Routes declare `responses=returns(SomeResponse)`; `install(app)` adds the referenced messages to
the document's `components.schemas` under their full proto names.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import FastAPI
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import ERROR_RESPONSES

Schema = dict[str, Any]

_INT64 = {"type": "string", "format": "int64", "description": "A 64-bit integer as a string."}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _INT64,
    FieldDescriptor.TYPE_FIXED64: _INT64,
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types have their own JSON forms.
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.500s"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
}

#: Every message schema referenced by a route, by full proto name.
COMPONENTS: dict[str, Schema] = {}


def _ref(descriptor: Descriptor) -> Schema:
    name = descriptor.full_name
    if name in _WELL_KNOWN:
        return _WELL_KNOWN[name]
    if name not in COMPONENTS:
        COMPONENTS[name] = {}  # placeholder first: messages may refer to themselves
        COMPONENTS[name] = {
            "type": "object",
            "title": descriptor.name,
            "properties": {f.name: _field(f) for f in descriptor.fields},
        }
    return {"$ref": f"#/components/schemas/{name}"}


def _single(field: FieldDescriptor) -> Schema:
    if field.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    if field.message_type is not None:
        return _ref(field.message_type)
    return dict(_SCALARS[field.type])


def _field(field: FieldDescriptor) -> Schema:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _single(message.fields_by_name["value"])}
    if field.is_repeated:
        return {"type": "array", "items": _single(field)}
    return _single(field)


def schema_of(message: type[Message]) -> Schema:
    return _ref(cast(Descriptor, message.DESCRIPTOR))


def returns(message: type[Message], description: str = "Success") -> dict[int | str, Any]:
    """`responses=` for a route that answers `message` as JSON, plus the error answers."""
    return {
        **ERROR_RESPONSES,
        200: {
            "description": description,
            "content": {"application/json": {"schema": schema_of(message)}},
        },
    }


def install(app: FastAPI) -> None:
    """Adds the protobuf message schemas to the app's OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
