"""Small translations between protobuf messages and plain Python values, shared by the
handlers of every server (the domain logic never sees protobuf)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from bitware.common.v1 import common_pb2
from bitware_core.auth import Principal
from bitware_core.errors import FieldViolation, InvalidArgument


# Enum classes from mypy-protobuf stubs share no common type, hence `Any` for `enum`.
def enum_name(enum: Any, value: int, prefix: str) -> str:
    """`TIER_BASIC` → `basic`; UNSPECIFIED → ``."""
    name: str = enum.Name(value)
    return "" if name.endswith("_UNSPECIFIED") else name.removeprefix(prefix).lower()


def enum_value(enum: Any, name: str, prefix: str) -> Any:
    """`basic` → TIER_BASIC; `` → 0."""
    return enum.Value(f"{prefix}{name.upper()}") if name else 0


def checked_enum(enum: Any, value: int, prefix: str, field: str) -> str:
    """The lower-case name of a request's enum field, or INVALID_ARGUMENT for unknown numbers."""
    try:
        return enum_name(enum, value, prefix)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, f"unknown value {value}")]) from None


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return stamp


def duration(seconds: float) -> duration_pb2.Duration:
    """`seconds` as a Duration, to the millisecond."""
    value = duration_pb2.Duration()
    value.FromMilliseconds(int(seconds * 1000))
    return value


def seconds(value: duration_pb2.Duration) -> float:
    """A Duration in seconds (zero when it is not set)."""
    return value.seconds + value.nanos / 1e9


def to_struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        struct.update(value)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def principal_to_proto(principal: Principal) -> common_pb2.Principal:
    return common_pb2.Principal(
        kind=enum_value(common_pb2.PrincipalKind, principal.kind, "PRINCIPAL_KIND_"),
        user_id=principal.user_id,
        client_id=principal.client_id,
        worker_id=principal.worker_id,
        role=enum_value(common_pb2.Role, principal.role, "ROLE_"),
        tier=enum_value(common_pb2.Tier, principal.tier, "TIER_"),
        scopes=list(principal.scopes),
        display_name=principal.display_name,
        api_key_id=principal.api_key_id,
    )


def principal_from_proto(message: common_pb2.Principal) -> Principal:
    return Principal(
        kind=enum_name(common_pb2.PrincipalKind, message.kind, "PRINCIPAL_KIND_"),
        user_id=message.user_id,
        client_id=message.client_id,
        worker_id=message.worker_id,
        role=enum_name(common_pb2.Role, message.role, "ROLE_"),
        tier=enum_name(common_pb2.Tier, message.tier, "TIER_"),
        scopes=tuple(message.scopes),
        display_name=message.display_name,
        api_key_id=message.api_key_id,
    )


def spec_from_proto(spec: common_pb2.ContentSpec) -> dict[str, Any]:
    return {
        "topic": spec.topic,
        "structure_type": enum_name(
            common_pb2.StructureType, spec.structure_type, "STRUCTURE_TYPE_"
        ),
        "audience": spec.audience,
        "granularity": spec.granularity,
        "constraints": dict(spec.constraints),
        "options": dict(spec.options),
    }


def spec_to_proto(spec: dict[str, Any]) -> common_pb2.ContentSpec:
    return common_pb2.ContentSpec(
        topic=spec.get("topic", ""),
        structure_type=enum_value(
            common_pb2.StructureType, spec.get("structure_type", ""), "STRUCTURE_TYPE_"
        ),
        audience=spec.get("audience", ""),
        granularity=int(spec.get("granularity", 0)),
        constraints=spec.get("constraints", {}),
        options=spec.get("options", {}),
    )
