"""Structure templates in the granulator's database: the six seeds inserted on first start,
admin-made templates created and updated (each update bumps the version), and lookup by the
flexible match of `domain.match_template` (exact name → structure type → partial name).

Templates are checked before they are stored; every problem comes back as a field violation.
"""

from __future__ import annotations

import re
import string
import threading
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bitware_core.db import PerEngine, next_page_token, page_window, utcnow
from bitware_core.errors import FieldViolation, Violations
from bitware_core.sql import Tx, columns, from_row
from granulator_server import models
from granulator_server.domain import (
    SEED_TEMPLATES,
    STRUCTURE_TYPES,
    StructureTemplate,
    ValidationRules,
    match_template,
)
from granulator_server.domain.rules import (
    GRANULARITY_LEVELS,
    CountRule,
    DependencyGraph,
    ExactlyOne,
    Mix,
    Reference,
    UniqueRule,
)
from granulator_server.errors import InvalidTemplate, TemplateExists, TemplateNotFound

NAME = re.compile(r"^[a-z][a-z0-9_]{1,99}$")
PLACEHOLDERS = frozenset({"topic", "audience", "granularity", "counts", "constraints", "options"})
EMPTY_RULES = ValidationRules(counts=(), required=(), descriptive=())
UPDATABLE = ("description", "json_schema", "prompt_template", "rules", "defaults")


def rules_to_dict(rules: ValidationRules) -> dict[str, Any]:
    """Plain JSON (tuples become lists)."""
    plain: dict[str, Any] = asdict(rules)
    for rule in plain["counts"]:
        rule["by_granularity"] = [list(pair) for pair in rule["by_granularity"]]
    return {key: list(value) if isinstance(value, tuple) else value for key, value in plain.items()}


def rules_from_dict(data: dict[str, Any]) -> ValidationRules:
    """The inverse of `rules_to_dict`. Raises ValueError naming what is wrong."""
    try:
        counts = tuple(
            CountRule(
                str(c["name"]),
                str(c["path"]),
                tuple((int(lo), int(hi)) for lo, hi in c["by_granularity"]),
            )
            for c in data.get("counts", [])
        )
        for rule in counts:
            if any(lo < 0 or hi < lo for lo, hi in rule.by_granularity):
                raise ValueError(f"{rule.name}: each range needs 0 <= min <= max")
        optional = {
            "acyclic": DependencyGraph,
            "exactly_one": ExactlyOne,
            "mix": Mix,
        }
        extra: dict[str, Any] = {}
        for key, kind in optional.items():
            value = data.get(key)
            if value:
                if kind is Mix:
                    value = {**value, "values": tuple(value["values"])}
                extra[key] = kind(**value)
        return ValidationRules(
            counts=counts,
            required=tuple(str(p) for p in data.get("required", [])),
            descriptive=tuple(str(p) for p in data.get("descriptive", [])),
            unique=tuple(UniqueRule(**u) for u in data.get("unique", [])),
            references=tuple(Reference(**r) for r in data.get("references", [])),
            accept_below_minimum=_flag(data.get("accept_below_minimum", False)),
            **extra,
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed rules: {error!r}") from None


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"accept_below_minimum must be true or false, not {value!r}")
    return value


def to_domain(row: models.Template) -> StructureTemplate:
    return StructureTemplate(
        name=row.name,
        structure_type=row.structure_type,
        description=row.description,
        json_schema=row.json_schema,
        prompt_template=row.prompt_template,
        rules=rules_from_dict(row.rules),
        defaults=dict(row.defaults),
        version=row.version,
    )


#: What the stored templates are at: (how many, sum of their versions). A create adds a row
#: and an update bumps one version, and nothing deletes, so every committed change, made by this
#: process or by another granulator sharing the database, changes it.
STAMP = "SELECT count(*), coalesce(sum(version), 0) FROM structure_templates"


class _TemplateCache:
    """All templates of one database, as domain objects, with the `STAMP` they were read at.
    A reader compares the stamp (one small query) and reloads when it differs, so a change is
    seen at once by every process, with no expiry time and no signal between processes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamp: tuple[int, int] | None = None
        self.templates: list[StructureTemplate] = []

    def get(self, stamp: tuple[int, int]) -> list[StructureTemplate] | None:
        with self.lock:
            return self.templates if stamp == self.stamp else None

    def put(self, stamp: tuple[int, int], templates: list[StructureTemplate]) -> None:
        with self.lock:
            self.stamp, self.templates = stamp, templates


_cache_for = PerEngine(_TemplateCache)


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _changed(session: Session) -> None:
    """Marks `session` as changing templates: what it reads is not cached (it may roll back)."""
    session.info["templates_changed"] = True


def _load(tx: Tx, cache: _TemplateCache | None) -> list[StructureTemplate]:
    # The stamp first: a change committed between the two reads then leaves a stamp older
    # than the rows, which the next reader reloads, never rows older than their stamp.
    count, versions = tx.one(STAMP)
    stamp = (int(count), int(versions))
    templates = cache.get(stamp) if cache is not None else None
    if templates is None:
        rows = tx.all(f"SELECT {columns(models.Template)} FROM structure_templates ORDER BY name")
        templates = [to_domain(from_row(tx, models.Template, row)) for row in rows]
        if cache is not None:
            cache.put(stamp, templates)
    return templates


def seed(session: Session) -> int:
    """Inserts each seed template whose name is not stored yet; returns how many it added."""
    present = set(session.scalars(select(models.Template.name)))
    added = 0
    for template in SEED_TEMPLATES:
        if template.name not in present:
            session.add(_row(template))
            added += 1
    if added:
        _changed(session)
    return added


def all_templates(session: Session) -> list[StructureTemplate]:
    """Every template, sorted by name; from this process's copy when it is current."""
    if session.info.get("templates_changed"):
        session.flush()
        return _load(Tx.of(session), None)
    return _load(Tx.of(session), _cache_for(_engine_of(session)))


def resolve_tx(tx: Tx, engine: Engine, query: str) -> tuple[StructureTemplate, str] | None:
    """`resolve` in a transaction of hand-written SQL on `engine`'s database (the Handshake's
    path: one small query when this process's copy is current)."""
    return _match(_load(tx, _cache_for(engine)), query)


def resolve(session: Session, query: str) -> tuple[StructureTemplate, str] | None:
    """The best match and how it matched (`exact`, `structure_type`, `partial`), or None."""
    return _match(all_templates(session), query)


def _match(templates: list[StructureTemplate], query: str) -> tuple[StructureTemplate, str] | None:
    template = match_template(templates, query)
    if template is None:
        return None
    wanted = query.strip().casefold().replace("-", "_").replace(" ", "_")
    if template.name.casefold() == wanted:
        return template, "exact"
    return template, "structure_type" if template.structure_type == wanted else "partial"


def find(session: Session, query: str) -> tuple[StructureTemplate, datetime, str]:
    found = resolve(session, query)
    if found is None:
        raise TemplateNotFound(query, f"no structure template matches {query!r}")
    template, match = found
    return template, session.get_one(models.Template, template.name).updated_at, match


def list_templates(
    session: Session, page_size: int, page_token: str, structure_type: str
) -> tuple[list[tuple[StructureTemplate, datetime]], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.Template).order_by(models.Template.name)
    if structure_type:
        query = query.where(models.Template.structure_type == structure_type)
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    page = [(to_domain(row), row.updated_at) for row in rows[:limit]]
    return page, next_page_token(offset, limit, len(rows))


def create(session: Session, template: StructureTemplate) -> tuple[StructureTemplate, datetime]:
    """Stores a new template at version 1. Empty rules (`accept_below_minimum` aside) inherit
    the rules of the seed template of the same structure type (the element tree and counts of a
    type stay the same)."""
    accept = template.rules.accept_below_minimum
    if replace(template.rules, accept_below_minimum=False) == EMPTY_RULES:
        seed_of_type = next(
            (t for t in SEED_TEMPLATES if t.structure_type == template.structure_type), None
        )
        if seed_of_type is not None:
            rules = replace(seed_of_type.rules, accept_below_minimum=accept)
            template = replace(template, rules=rules)
    check(template, prefix="template")
    if session.get(models.Template, template.name) is not None:
        raise TemplateExists(template.name)
    row = _row(replace(template, version=1))
    session.add(row)
    _changed(session)
    return to_domain(row), row.updated_at


def update(
    session: Session, changes: StructureTemplate, mask: list[str]
) -> tuple[StructureTemplate, datetime]:
    """Applies the masked fields of `changes` (all updatable ones when the mask is empty)."""
    problems = Violations()
    for index, path in enumerate(mask):
        problems.check(path in UPDATABLE, f"update_mask.paths[{index}]", f"cannot update {path!r}")
    problems.raise_if_any()
    row = session.get(models.Template, changes.name) if changes.name else None
    if row is None:
        raise TemplateNotFound(changes.name)
    current = to_domain(row)
    # Without a mask, the fields the request sets (AIP-134); empty rules count as unset.
    paths = mask or [p for p in UPDATABLE if getattr(changes, p) not in ("", {}, EMPTY_RULES)]
    fields = {path: getattr(changes, path) for path in paths}
    updated = replace(current, **fields, version=current.version + 1)
    check(updated, prefix="template")
    row.description, row.json_schema = updated.description, updated.json_schema
    row.prompt_template, row.defaults = updated.prompt_template, updated.defaults
    row.rules, row.version, row.updated_at = rules_to_dict(updated.rules), updated.version, utcnow()
    _changed(session)
    return updated, row.updated_at


def check(template: StructureTemplate, prefix: str) -> None:
    """Raises InvalidTemplate listing every problem of `template`."""
    problems: list[FieldViolation] = []

    def add(field: str, description: str) -> None:
        problems.append(FieldViolation(f"{prefix}.{field}", description))

    if not NAME.match(template.name):
        add("name", "must be 2-100 characters of a-z, 0-9 and _, starting with a letter")
    if template.structure_type not in STRUCTURE_TYPES:
        add("structure_type", f"unknown structure type; one of {', '.join(STRUCTURE_TYPES)}")
    _check_prompt(template.prompt_template, add)
    _check_schema(template.json_schema, add)
    for index, rule in enumerate(template.rules.counts):
        if len(rule.by_granularity) != GRANULARITY_LEVELS:
            add(f"rules.counts[{index}]", f"needs {GRANULARITY_LEVELS} (min, max) ranges")
    if problems:
        raise InvalidTemplate(problems)


def _check_prompt(prompt: str, add: Any) -> None:
    if not prompt.strip():
        add("prompt_template", "must not be empty")
        return
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None}
    except ValueError as error:
        add("prompt_template", f"is not a valid format string: {error}")
        return
    unknown = sorted(names - PLACEHOLDERS)
    if unknown:
        known = ", ".join("{" + name + "}" for name in sorted(PLACEHOLDERS))
        add("prompt_template", f"unknown placeholders {unknown}; known ones are {known}")
    if "topic" not in names:
        add("prompt_template", "must use the {topic} placeholder")


def _check_schema(schema: dict[str, Any], add: Any) -> None:
    if not schema:
        add("json_schema", "is required")
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        add("json_schema", f"is not a valid JSON Schema: {error.message}")
        return
    if schema.get("type") != "object":
        add("json_schema", "must describe a JSON object (type: object)")


def _row(template: StructureTemplate) -> models.Template:
    now = utcnow()
    return models.Template(
        name=template.name,
        structure_type=template.structure_type,
        description=template.description,
        json_schema=template.json_schema,
        prompt_template=template.prompt_template,
        rules=rules_to_dict(template.rules),
        defaults=dict(template.defaults),
        version=template.version,
        created_at=now,
        updated_at=now,
    )
