"""The audit log: who changed what, and when. Admin actions, every key or credential change and
every sign-in write one event in the same transaction as the change itself (a failed sign-in in
a transaction of its own); details never hold secrets."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window
from kam_server import models


def actor_name(actor: Principal) -> str:
    """`admin@x.test (usr_…)`: a name for people and the id that stays true after renames."""
    ident = actor.user_id or actor.api_key_id or actor.worker_id
    name = actor.display_name or ident
    return f"{name} ({ident})" if ident and ident != name else name


def record(
    session: Session, actor: Principal | str, action: str, target: str, **details: str
) -> None:
    """`actor` is the principal, or a name for a caller who has none (a failed sign-in)."""
    session.add(
        models.AuditEvent(
            id=new_id("aud"),
            actor=actor if isinstance(actor, str) else actor_name(actor),
            action=action,
            target=target,
            details={key: str(value) for key, value in details.items()},
        )
    )


def list_events(
    session: Session, page_size: int, page_token: str, action_prefix: str
) -> tuple[list[models.AuditEvent], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.AuditEvent)
    if action_prefix:
        # LIKE would treat `_` in prefixes such as `api_key.` as a wildcard.
        query = query.where(models.AuditEvent.action.startswith(action_prefix, autoescape=True))
    query = query.order_by(models.AuditEvent.at.desc(), models.AuditEvent.id.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))
