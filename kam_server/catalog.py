"""Master templates: versioned, immutable pipeline recipes.

Creating a template with an existing name adds a version; versions never change afterwards
(requests pin one), except that deprecation marks every version of a name as no longer
executable. First start installs `<type>_standard` for each structure type and the two-stage
`course_reviewed` (generate, then an independent validation with a quality gate).

A definition is checked whole (every problem is reported at once): stages numbered 1..N, each
stage's capability and action known to the mesh (`bitware_core.pipelines`, plus KAM's
`extra_capabilities`), and a quality gate only where a rerun can change the score: a stage that
generates regenerates with the gate's feedback, while a review stage would score the same
document again, so it must say `review_again_below_quality`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import next_page_token, page_window
from bitware_core.domain import RetryPolicy, StageDefinition
from bitware_core.domain.template import DEFAULT_TIMEOUT_S
from bitware_core.errors import Violations
from bitware_core.pipelines import BUILT_IN_CAPABILITIES, REVIEW_ACTIONS, stage_order_problems
from bitware_core.sql import Tx, select_rows
from bitware_core.tiers import TIERS
from kam_server import audit, models
from kam_server.errors import TemplateNotFound

STRUCTURE_TYPES = ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path")
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
MAX_STAGES = 20


@dataclass(frozen=True)
class StageInput:
    """One stage as a caller defines it; `retry_policy` None means the default policy."""

    order: int
    name: str
    capability: str
    action: str
    structure_template: str = ""
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 0.0
    retry_policy: RetryPolicy | None = None
    min_quality_score: float = 0.0
    review_again_below_quality: bool = False


@dataclass(frozen=True)
class TemplateInput:
    name: str
    description: str
    structure_type: str
    stages: list[StageInput]
    allowed_tiers: list[str]
    cost_estimate_usd: float
    execution_timeout_s: float = 0.0


def _check_stage_kind(
    problems: Violations, at: str, stage: StageInput, extra_capabilities: frozenset[str]
) -> None:
    """The capability and action exist, and a quality gate can change its verdict on a rerun."""
    actions = BUILT_IN_CAPABILITIES.get(stage.capability)
    if actions is None:
        known = sorted({*BUILT_IN_CAPABILITIES, *extra_capabilities})
        problems.check(
            stage.capability in extra_capabilities,
            f"{at}.capability",
            f"{stage.capability!r} is not a capability the mesh knows ({', '.join(known)}); "
            "KAM's BITWARE_EXTRA_CAPABILITIES names those of other workers",
        )
        return  # the actions of other workers are theirs to check
    problems.check(
        stage.action in actions,
        f"{at}.action",
        f"must be {' or '.join(actions)} for capability {stage.capability}",
    )
    reviews = (stage.capability, stage.action) in REVIEW_ACTIONS
    problems.check(
        not reviews or stage.order != 1,
        f"{at}.order",
        "a review stage needs an earlier stage whose document it reviews",
    )
    problems.check(
        not reviews or stage.min_quality_score == 0 or stage.review_again_below_quality,
        f"{at}.review_again_below_quality",
        "a review stage whose quality gate fails reviews the same document again; set "
        "review_again_below_quality to say so, or put the gate on the stage that generates it",
    )
    problems.check(
        reviews or not stage.review_again_below_quality,
        f"{at}.review_again_below_quality",
        "is only for stages that review an earlier stage's document",
    )


def _validate(
    new: TemplateInput, extra_capabilities: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Every problem of a definition at once, as field violations; else the stages as stored."""
    problems = Violations()
    problems.check(
        bool(SNAKE.match(new.name)) and len(new.name) <= 100,
        "template.name",
        "must be lower_snake_case, at most 100 characters",
    )
    problems.check(len(new.description) <= 2000, "template.description", "is too long")
    problems.check(
        new.structure_type in STRUCTURE_TYPES,
        "template.structure_type",
        f"must be one of {', '.join(STRUCTURE_TYPES)}",
    )
    problems.check(bool(new.stages), "template.stages", "must not be empty")
    problems.check(len(new.stages) <= MAX_STAGES, "template.stages", f"at most {MAX_STAGES}")
    for index, tier in enumerate(new.allowed_tiers):
        problems.check(tier in TIERS, f"template.allowed_tiers[{index}]", "is not a known tier")
    problems.check(new.cost_estimate_usd >= 0, "template.cost_estimate_usd", "must not be negative")
    problems.check(
        new.execution_timeout_s >= 0, "template.execution_timeout", "must not be negative"
    )
    for index, problem in stage_order_problems([stage.order for stage in new.stages]):
        problems.add(f"template.stages[{index}].order", problem)
    stages = []
    for index, stage in enumerate(new.stages):
        at = f"template.stages[{index}]"
        problems.check(
            bool(SNAKE.match(stage.capability)),
            f"{at}.capability",
            "must be lower_snake_case, for example granulate",
        )
        problems.check(bool(SNAKE.match(stage.action)), f"{at}.action", "must be lower_snake_case")
        if SNAKE.match(stage.capability):
            _check_stage_kind(problems, at, stage, extra_capabilities)
        problems.check(len(stage.name) <= 100, f"{at}.name", "is too long")
        problems.check(stage.timeout_s >= 0, f"{at}.timeout", "must not be negative")
        problems.check(
            0 <= stage.min_quality_score <= 100,
            f"{at}.min_quality_score",
            "must be from 0 to 100",
        )
        retry = RetryPolicy()
        if (policy := stage.retry_policy) is not None:
            rp = f"{at}.retry_policy"
            problems.check(
                1 <= policy.max_attempts <= 10, f"{rp}.max_attempts", "must be from 1 to 10"
            )
            problems.check(
                policy.backoff_multiplier == 0 or policy.backoff_multiplier >= 1,
                f"{rp}.backoff_multiplier",
                "must be at least 1 (0 means the default, 2)",
            )
            problems.check(
                policy.initial_backoff_s >= 0, f"{rp}.initial_backoff", "must not be negative"
            )
            problems.check(policy.max_backoff_s >= 0, f"{rp}.max_backoff", "must not be negative")
            problems.check(
                policy.max_backoff_s == 0 or policy.max_backoff_s >= policy.initial_backoff_s,
                f"{rp}.max_backoff",
                "must not be shorter than initial_backoff",
            )
            retry = policy.resolved()
        stages.append(
            StageDefinition(
                order=stage.order,
                name=stage.name or stage.action,
                capability=stage.capability,
                action=stage.action,
                structure_template=stage.structure_template,
                params=dict(stage.params),
                timeout_s=stage.timeout_s or DEFAULT_TIMEOUT_S,
                retry_policy=retry,
                min_quality_score=stage.min_quality_score,
                review_again_below_quality=stage.review_again_below_quality,
            )
        )
    problems.raise_if_any()
    return [stage.to_json() for stage in sorted(stages, key=lambda s: s.order)]


def _add_version(
    session: Session, new: TemplateInput, extra_capabilities: frozenset[str] = frozenset()
) -> models.MasterTemplate:
    stages = _validate(new, extra_capabilities)
    latest = session.scalar(
        select(func.max(models.MasterTemplate.version)).where(
            models.MasterTemplate.name == new.name
        )
    )
    row = models.MasterTemplate(
        name=new.name,
        version=(latest or 0) + 1,
        description=new.description,
        structure_type=new.structure_type,
        stages=stages,
        allowed_tiers=list(new.allowed_tiers),
        cost_estimate_usd=new.cost_estimate_usd,
        execution_timeout_s=new.execution_timeout_s,
    )
    session.add(row)
    session.flush()
    return row


def create(
    session: Session,
    actor: Principal,
    new: TemplateInput,
    extra_capabilities: frozenset[str] = frozenset(),
) -> models.MasterTemplate:
    """Stores `new` as the next version of its name; `extra_capabilities` are those of workers
    other than the built-in ones (KAM's setting)."""
    row = _add_version(session, new, extra_capabilities)
    audit.record(
        session,
        actor,
        "template.create",
        f"templates/{row.name}/versions/{row.version}",
        stages=str(len(row.stages)),
        cost_estimate_usd=f"{row.cost_estimate_usd:.2f}",
    )
    return row


def get(tx: Tx, name: str, version: int = 0) -> models.MasterTemplate:
    """The template of that name: the given version, else the newest."""
    where = "name = :name" + (" AND version = :version" if version else "")
    rows = select_rows(
        tx,
        models.MasterTemplate,
        f"{where} ORDER BY version DESC LIMIT 1",
        {"name": name, "version": version},
    )
    if not rows:
        raise TemplateNotFound(name, version or None)
    return rows[0]


def list_latest(
    session: Session, page_size: int, page_token: str, include_deprecated: bool
) -> tuple[list[models.MasterTemplate], str]:
    offset, limit = page_window(page_size, page_token)
    latest = (
        select(models.MasterTemplate.name, func.max(models.MasterTemplate.version).label("v"))
        .group_by(models.MasterTemplate.name)
        .subquery()
    )
    query = select(models.MasterTemplate).join(
        latest,
        (models.MasterTemplate.name == latest.c.name)
        & (models.MasterTemplate.version == latest.c.v),
    )
    if not include_deprecated:
        query = query.where(models.MasterTemplate.deprecated.is_(False))
    rows = list(
        session.scalars(query.order_by(models.MasterTemplate.name).offset(offset).limit(limit + 1))
    )
    return rows[:limit], next_page_token(offset, limit, len(rows))


def deprecate(session: Session, actor: Principal, name: str) -> models.MasterTemplate:
    problems = Violations()
    problems.check(bool(name), "name", "is required")
    problems.raise_if_any()
    latest = get(Tx.of(session), name)
    session.execute(
        update(models.MasterTemplate)
        .where(models.MasterTemplate.name == name)
        .values(deprecated=True)
    )
    latest.deprecated = True
    audit.record(session, actor, "template.deprecate", f"templates/{name}")
    return latest


# --- first start ----------------------------------------------------------------------------


def _generate_stage(structure_type: str) -> StageInput:
    return StageInput(
        order=1,
        name="generate",
        capability="granulate",
        action="generate",
        structure_template=structure_type,
        timeout_s=DEFAULT_TIMEOUT_S,
        min_quality_score=60.0,
    )


def _seeds() -> list[TemplateInput]:
    seeds = [
        TemplateInput(
            name=f"{structure_type}_standard",
            description=f"Generate a {structure_type.replace('_', ' ')} with the granulator.",
            structure_type=structure_type,
            stages=[_generate_stage(structure_type)],
            allowed_tiers=[],
            cost_estimate_usd=0.05,
            execution_timeout_s=600.0,
        )
        for structure_type in STRUCTURE_TYPES
    ]
    seeds.append(
        TemplateInput(
            name="course_reviewed",
            description="Generate a course, then validate it independently (quality 70+).",
            structure_type="course",
            stages=[
                _generate_stage("course"),
                StageInput(
                    order=2,
                    name="review",
                    capability="validate",
                    action="validate",
                    structure_template="course",
                    timeout_s=60.0,
                    min_quality_score=70.0,
                    review_again_below_quality=True,
                ),
            ],
            allowed_tiers=[],
            cost_estimate_usd=0.08,
            execution_timeout_s=900.0,
        )
    )
    return seeds


def seed(session: Session) -> None:
    """Installs each built-in template when no version of its name exists."""
    for template in _seeds():
        exists = session.scalar(
            select(func.count()).where(models.MasterTemplate.name == template.name)
        )
        if not exists:
            _add_version(session, template)
