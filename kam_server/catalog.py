"""Master templates: versioned, immutable pipeline recipes, seeded with one per structure type."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bitware_core.db import next_page_token, page_window
from kam_server import models
from kam_server.errors import TemplateNotFound

STRUCTURE_TYPES = ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path")

DEFAULT_RETRY: dict[str, Any] = {
    "max_attempts": 3,
    "initial_backoff_s": 0.5,
    "max_backoff_s": 10.0,
    "backoff_multiplier": 2.0,
    "non_retryable_errors": ["INVALID_INPUT", "BUDGET", "PERMISSION", "REFUSED", "TOO_LARGE"],
}


def _generate_stage(structure_type: str) -> dict[str, Any]:
    return {
        "order": 1,
        "name": "generate",
        "capability": "granulate",
        "action": "generate",
        "structure_template": structure_type,
        "params": {},
        "timeout_s": 120.0,
        "retry_policy": DEFAULT_RETRY,
        "min_quality_score": 60.0,
    }


def seed(session: Session) -> None:
    """Installs `<type>_standard` for each structure type when no version of it exists."""
    for structure_type in STRUCTURE_TYPES:
        name = f"{structure_type}_standard"
        if session.scalar(select(func.count()).where(models.MasterTemplate.name == name)):
            continue
        session.add(
            models.MasterTemplate(
                name=name,
                version=1,
                description=f"Generate a {structure_type.replace('_', ' ')} with the granulator.",
                structure_type=structure_type,
                stages=[_generate_stage(structure_type)],
                allowed_tiers=[],
                cost_estimate_usd=0.05,
                execution_timeout_s=600.0,
            )
        )


def get(session: Session, name: str, version: int = 0) -> models.MasterTemplate:
    query = select(models.MasterTemplate).where(models.MasterTemplate.name == name)
    if version:
        query = query.where(models.MasterTemplate.version == version)
    row = session.scalar(query.order_by(models.MasterTemplate.version.desc()).limit(1))
    if row is None:
        suffix = f" version {version}" if version else ""
        raise TemplateNotFound(f"master template {name!r}{suffix} not found")
    return row


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
