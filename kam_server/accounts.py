"""Users and clients: who may sign in with which role, and the organisations they work for.

Rules that hold whatever the caller asks: there is always at least one active admin; a client
user belongs to exactly one existing client and counts against its tier's user limit; admins and
support belong to no client; a client principal only ever sees its own client (others answer
NOT_FOUND, never PERMISSION_DENIED, so ids cannot be probed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bitware_core.auth import ADMIN, SUPPORT, Principal, hash_password
from bitware_core.db import new_id, next_page_token, page_window
from bitware_core.errors import AlreadyExists, Violations
from bitware_core.tiers import TIER_LIMITS, TIERS
from kam_server import audit, identity, models
from kam_server.errors import ClientNotFound, LastAdmin, UserLimitReached, UserNotFound

ROLES = ("admin", "client", "support")
CLIENT_STATUSES = ("active", "suspended")
MIN_PASSWORD_LENGTH = 12
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_password(problems: Violations, field: str, password: str) -> None:
    problems.check(
        len(password) >= MIN_PASSWORD_LENGTH,
        field,
        f"must be at least {MIN_PASSWORD_LENGTH} characters",
    )


# --- users ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserFields:
    """What a caller may set on a user (the handler fills only the fields it was given)."""

    email: str = ""
    display_name: str = ""
    role: str = ""
    client_id: str = ""
    active: bool = True


def _check_role_and_client(
    session: Session, problems: Violations, role: str, client_id: str, prefix: str
) -> models.Client | None:
    problems.check(role in ROLES, f"{prefix}role", f"must be one of {', '.join(ROLES)}")
    if role == "client":
        problems.check(bool(client_id), f"{prefix}client_id", "is required for client users")
    elif role in ROLES:
        problems.check(not client_id, f"{prefix}client_id", f"must be empty for {role} users")
    problems.raise_if_any()
    if role != "client":
        return None
    client = session.get(models.Client, client_id)
    if client is None:
        raise ClientNotFound(client_id)
    return client


def _check_user_limit(session: Session, client: models.Client, excluding: str = "") -> None:
    limits = TIER_LIMITS[client.tier]
    count = session.scalar(
        select(func.count()).where(models.User.client_id == client.id, models.User.id != excluding)
    )
    if (count or 0) >= limits.max_users:
        raise UserLimitReached(client.id, client.tier, limits.max_users)


def _other_active_admins(session: Session, user_id: str) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                models.User.role == ADMIN, models.User.active.is_(True), models.User.id != user_id
            )
        )
        or 0
    )


def _end_sessions(session: Session, user_id: str) -> None:
    identity.auth_changed(session)
    session.execute(
        update(models.Session).where(models.Session.user_id == user_id).values(revoked=True)
    )


def create_user(
    session: Session, actor: Principal, fields: UserFields, password: str
) -> models.User:
    problems = Violations()
    email = fields.email.strip().lower()
    problems.check(bool(_EMAIL.match(email)), "user.email", "must be an email address")
    problems.check(len(fields.display_name) <= 200, "user.display_name", "is too long")
    _check_password(problems, "password", password)
    client = _check_role_and_client(session, problems, fields.role, fields.client_id, "user.")
    if session.scalar(select(models.User.id).where(models.User.email == email)) is not None:
        raise AlreadyExists(f"a user with email {email} already exists")
    if client is not None:
        _check_user_limit(session, client)
    user = models.User(
        id=new_id("usr"),
        email=email,
        display_name=fields.display_name.strip(),
        role=fields.role,
        client_id=client.id if client else None,
        password_hash=hash_password(password),
        active=fields.active,
    )
    session.add(user)
    audit.record(
        session,
        actor,
        "user.create",
        f"users/{user.id}",
        email=email,
        role=user.role,
        client_id=user.client_id or "",
    )
    return user


def get_user(session: Session, actor: Principal, user_id: str) -> models.User:
    """Staff read any user; everyone else only themselves."""
    user = session.get(models.User, user_id) if user_id else None
    may_see = actor.tag in (ADMIN, SUPPORT) or (actor.kind == "user" and actor.user_id == user_id)
    if user is None or not may_see:
        raise UserNotFound(user_id)
    return user


def list_users(
    session: Session, page_size: int, page_token: str, client_id: str
) -> tuple[list[models.User], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.User)
    if client_id:
        query = query.where(models.User.client_id == client_id)
    query = query.order_by(models.User.email).offset(offset).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], next_page_token(offset, limit, len(rows))


USER_MASK = ("display_name", "role", "client_id", "active")


def update_user(
    session: Session,
    actor: Principal,
    user_id: str,
    fields: UserFields,
    mask: list[str],
    new_password: str,
) -> models.User:
    problems = Violations()
    problems.check(bool(user_id), "user.user_id", "is required")
    problems.check(bool(mask) or bool(new_password), "update_mask", "is required")
    for path in mask:
        problems.check(
            path in USER_MASK, "update_mask", f"{path!r} is not one of {', '.join(USER_MASK)}"
        )
    if new_password:
        _check_password(problems, "new_password", new_password)
    if "display_name" in mask:
        problems.check(len(fields.display_name) <= 200, "user.display_name", "is too long")
    problems.raise_if_any()
    user = get_user(session, actor, user_id)
    role = fields.role if "role" in mask else user.role
    client_id = fields.client_id if "client_id" in mask else (user.client_id or "")
    if "role" in mask and role != "client" and "client_id" not in mask:
        client_id = ""  # leaving the client role leaves the client
    active = fields.active if "active" in mask else user.active
    client = _check_role_and_client(session, problems, role, client_id, "user.")
    demoted = user.role == ADMIN and user.active and (role != ADMIN or not active)
    if demoted and not _other_active_admins(session, user.id):
        raise LastAdmin(user.id)
    if client is not None and client.id != user.client_id:
        _check_user_limit(session, client, excluding=user.id)
    changed: dict[str, str] = {}
    if "display_name" in mask:
        user.display_name = fields.display_name.strip()
        changed["display_name"] = user.display_name
    if (role, client_id) != (user.role, user.client_id or ""):
        user.role, user.client_id = role, client.id if client else None
        changed.update(role=role, client_id=client_id)
    if active != user.active:
        user.active = active
        changed["active"] = str(active).lower()
        if not active:
            _end_sessions(session, user.id)
    if new_password:
        user.password_hash = hash_password(new_password)
        changed["password"] = "changed"  # never the password itself
        _end_sessions(session, user.id)
    identity.auth_changed(session)
    audit.record(session, actor, "user.update", f"users/{user.id}", **changed)
    return user


def delete_user(session: Session, actor: Principal, user_id: str) -> None:
    user = get_user(session, actor, user_id)
    if user.role == ADMIN and user.active and not _other_active_admins(session, user.id):
        raise LastAdmin(user.id)
    identity.auth_changed(session)
    session.execute(delete(models.Session).where(models.Session.user_id == user.id))
    session.delete(user)
    audit.record(session, actor, "user.delete", f"users/{user.id}", email=user.email)


# --- clients --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientFields:
    """What a caller may set on a client."""

    company_name: str = ""
    contact_email: str = ""
    tier: str = ""
    monthly_budget_usd: float = 0.0
    status: str = ""
    industry: str = ""
    company_size: str = ""


CLIENT_MASK = (
    "company_name",
    "contact_email",
    "tier",
    "monthly_budget_usd",
    "status",
    "industry",
    "company_size",
)


def _check_client(problems: Violations, fields: ClientFields, mask: tuple[str, ...]) -> None:
    if "company_name" in mask:
        name = fields.company_name.strip()
        problems.check(bool(name), "client.company_name", "is required")
        problems.check(len(name) <= 200, "client.company_name", "must be at most 200 characters")
    if "contact_email" in mask:
        problems.check(
            bool(_EMAIL.match(fields.contact_email.strip())),
            "client.contact_email",
            "must be an email address",
        )
    if "tier" in mask:
        problems.check(fields.tier in TIERS, "client.tier", f"must be one of {', '.join(TIERS)}")
    if "monthly_budget_usd" in mask:
        problems.check(
            fields.monthly_budget_usd >= 0, "client.monthly_budget_usd", "must not be negative"
        )
    if "status" in mask:
        problems.check(
            fields.status in CLIENT_STATUSES, "client.status", "must be active or suspended"
        )
    if "industry" in mask:
        problems.check(len(fields.industry) <= 100, "client.industry", "is too long")
    if "company_size" in mask:
        problems.check(len(fields.company_size) <= 20, "client.company_size", "is too long")


def get_client(
    session: Session, principal: Principal, client_id: str, for_update: bool = False
) -> models.Client:
    """The client if the caller may see it; `for_update` locks its row, which serialises
    budget and tier checks of one client across KAM replicas on PostgreSQL."""
    client = (
        session.get(models.Client, client_id, with_for_update=for_update) if client_id else None
    )
    return visible_client(principal, client_id, client)


def named_or_own_client(session: Session, actor: Principal, client_id: str) -> models.Client:
    """The client a call names, else the caller's own (INVALID_ARGUMENT for a caller without
    one); NOT_FOUND for a client the caller may not see."""
    problems = Violations()
    problems.check(
        bool(client_id or actor.client_id), "client_id", "is required for callers without a client"
    )
    problems.raise_if_any()
    return get_client(session, actor, client_id or actor.client_id)


def visible_client(
    principal: Principal, client_id: str, client: models.Client | None
) -> models.Client:
    """The client found for `client_id`, or ClientNotFound when there is none or the caller may
    not see it (the same answer, so that ids cannot be probed)."""
    if client is None or not principal.visible_client(client.id):
        raise ClientNotFound(client_id)
    return client


def create_client(session: Session, actor: Principal, fields: ClientFields) -> models.Client:
    problems = Violations()
    _check_client(problems, fields, tuple(m for m in CLIENT_MASK if m != "status"))
    problems.raise_if_any()
    client = models.Client(
        id=new_id("cli"),
        company_name=fields.company_name.strip(),
        contact_email=fields.contact_email.strip(),
        tier=fields.tier,
        monthly_budget_usd=fields.monthly_budget_usd,
        status="active",
        industry=fields.industry.strip(),
        company_size=fields.company_size.strip(),
    )
    session.add(client)
    audit.record(
        session,
        actor,
        "client.create",
        f"clients/{client.id}",
        company_name=client.company_name,
        tier=client.tier,
        monthly_budget_usd=f"{client.monthly_budget_usd:.2f}",
    )
    return client


def list_clients(
    session: Session, page_size: int, page_token: str, status: str, tier: str
) -> tuple[list[models.Client], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.Client)
    if status:
        query = query.where(models.Client.status == status)
    if tier:
        query = query.where(models.Client.tier == tier)
    query = query.order_by(models.Client.created_at, models.Client.id)
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def update_client(
    session: Session, actor: Principal, client_id: str, fields: ClientFields, mask: list[str]
) -> models.Client:
    problems = Violations()
    problems.check(bool(client_id), "client.client_id", "is required")
    problems.check(bool(mask), "update_mask", "is required")
    for path in mask:
        problems.check(
            path in CLIENT_MASK, "update_mask", f"{path!r} is not one of {', '.join(CLIENT_MASK)}"
        )
    _check_client(problems, fields, tuple(mask))
    problems.raise_if_any()
    client = get_client(session, actor, client_id)
    changed: dict[str, str] = {}
    for path in mask:
        value = getattr(fields, path)
        if isinstance(value, str):
            value = value.strip()
        if getattr(client, path) != value:
            setattr(client, path, value)
            changed[path] = f"{value:.2f}" if isinstance(value, float) else str(value)
    identity.auth_changed(session)  # an API key's principal carries the client's tier
    audit.record(session, actor, "client.update", f"clients/{client.id}", **changed)
    return client


def suspend_client(
    session: Session, actor: Principal, client_id: str, reason: str
) -> models.Client:
    problems = Violations()
    problems.check(bool(client_id), "client_id", "is required")
    problems.raise_if_any()
    client = get_client(session, actor, client_id)
    client.status = "suspended"
    identity.auth_changed(session)
    audit.record(session, actor, "client.suspend", f"clients/{client.id}", reason=reason[:500])
    return client
