"""Every domain error has a reason of its own and maps to a status, with its fields as
`ErrorInfo.metadata`: a walk over every `MeshError` class of the core and the three servers, and
over the granulator's `StageFailure` classes (a reason each, a known error class)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import granulator_server.errors
import kam_server.errors
import orchestrator_server.errors
from bitware.worker.v1 import worker_pb2
from bitware_core import errors
from bitware_core.errors import NOT_METADATA, FieldViolation, MeshError
from bitware_core.server import status_for
from granulator_server.errors import StageFailure

#: Each server's errors module and the ErrorInfo domain its server answers with.
SERVERS: dict[str, tuple[types.ModuleType, str]] = {
    "kam": (kam_server.errors, "kam.bitware"),
    "orchestrator": (orchestrator_server.errors, "orchestrator.bitware"),
    "granulator": (granulator_server.errors, "granulator.bitware"),
}
#: Base classes that are only raised as one of their subclasses.
ABSTRACT = {kam_server.errors.TierLimitExceeded, kam_server.errors.TierNotAllowed}


def classes_of(module: types.ModuleType) -> set[type[MeshError]]:
    return {
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, MeshError)
    }


def every_class() -> list[type[MeshError]]:
    found = classes_of(errors)
    for module, _ in SERVERS.values():
        found |= classes_of(module)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def example(annotation: Any, name: str) -> Any:
    """A value of a field's type, different for each field so that mix-ups show."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation) or annotation
    values: dict[Any, Any] = {
        str: f"{name}-value",
        int: 7,
        float: 2.5,
        bool: True,
        datetime: datetime(2026, 11, 30, 7, 0),
        tuple: ("read",),
        list: [FieldViolation(f"{name}.field", "is wrong")],
    }
    return values[origin]


def instance(cls: type[MeshError]) -> MeshError:
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: example(hints[f.name], f.name) for f in dataclasses.fields(cls)})
    if issubclass(cls, errors.InvalidArgument):
        return cls([FieldViolation("field", "is wrong")])
    return cls("went wrong")


def status_of(error: MeshError, domain: str) -> status_pb2.Status:
    status = status_for(error, domain)
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no grpc-status-details-bin")


@pytest.mark.parametrize("cls", every_class(), ids=lambda cls: cls.__qualname__)
def test_every_error_has_a_reason_and_maps_to_a_status(cls: type[MeshError]) -> None:
    assert cls.reason and cls.reason == cls.reason.upper(), cls
    if cls is not MeshError:
        assert cls.reason != MeshError.reason, f"{cls.__qualname__} reuses INTERNAL"
    error = instance(cls)
    status = status_for(error, "tests.bitware")
    assert status.code == grpc.StatusCode[cls.code]
    assert status.details == error.message and error.message
    (packed, *_) = status_of(error, "tests.bitware").details
    info = error_details_pb2.ErrorInfo()
    assert packed.Unpack(info)
    assert (info.reason, info.domain) == (cls.reason, "tests.bitware")
    assert dict(info.metadata) == error.metadata


@pytest.mark.parametrize("cls", every_class(), ids=lambda cls: cls.__qualname__)
def test_every_field_of_an_error_is_metadata(cls: type[MeshError]) -> None:
    if not dataclasses.is_dataclass(cls):
        assert instance(cls).metadata == {}
        return
    error = instance(cls)
    keys = {
        f.metadata.get("key") or f.name
        for f in dataclasses.fields(cls)
        if f.name not in NOT_METADATA
    }
    assert set(error.metadata) == keys
    assert all(isinstance(value, str) and value for value in error.metadata.values())


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_no_two_errors_of_a_server_share_a_reason(server: str) -> None:
    module, _ = SERVERS[server]
    by_reason: dict[str, list[str]] = {}
    for cls in classes_of(errors) | classes_of(module):
        by_reason.setdefault(cls.reason, []).append(cls.__qualname__)
    shared = {reason: names for reason, names in by_reason.items() if len(names) > 1}
    assert not shared


def test_abstract_bases_are_raised_only_as_their_subclasses() -> None:
    source = "\n".join(p.read_text() for p in Path(kam_server.errors.__file__).parent.rglob("*.py"))
    for cls in ABSTRACT:
        assert cls.__subclasses__(), cls
        assert f"raise {cls.__name__}(" not in source


def stage_failures() -> list[type[StageFailure]]:
    found = [
        value
        for value in vars(granulator_server.errors).values()
        if isinstance(value, type) and issubclass(value, StageFailure)
    ]
    return sorted(found, key=lambda cls: cls.__qualname__)


def test_every_stage_failure_has_a_reason_of_its_own_and_a_known_error_class() -> None:
    by_reason: dict[str, list[str]] = {}
    for cls in stage_failures():
        assert worker_pb2.ErrorClass.Value(f"ERROR_CLASS_{cls.error_class}"), cls
        if not cls.reason:  # a family: raised only as one of its subclasses
            assert cls.__subclasses__(), f"{cls.__qualname__} has no reason and no subclass"
            continue
        assert cls.reason == cls.reason.upper(), cls
        by_reason.setdefault(cls.reason, []).append(cls.__qualname__)
    assert not {reason: names for reason, names in by_reason.items() if len(names) > 1}
    families = [cls.__name__ for cls in stage_failures() if not cls.reason]
    package = Path(granulator_server.errors.__file__).parent
    for path in set(package.rglob("*.py")) - {Path(granulator_server.errors.__file__)}:
        text = path.read_text()
        assert not [name for name in families if re.search(rf"\b{name}\(", text)], path
