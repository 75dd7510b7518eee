"""Who a caller is: sign-in, sessions, API keys, worker credentials, first-start bootstrap,
clients and their tiers, and the audit log of changes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bitware_core.auth import Credentials, Principal, hash_password, hash_secret, new_secret
from bitware_core.auth import verify_password as password_matches
from bitware_core.db import new_id, utcnow
from bitware_core.errors import AlreadyExists, InvalidArgument, Violations
from kam_server import models
from kam_server.errors import ApiKeyNotFound, BadCredential, ClientNotFound, LoginThrottled

SESSION_LIFETIME = timedelta(hours=24)
MAX_LOGIN_FAILURES = 5
LOGIN_WINDOW = timedelta(minutes=15)
API_KEY_PREFIX = "bwk_"
TIERS = ("basic", "standard", "premium", "enterprise")
PRIORITIES = ("low", "normal", "high", "critical")


@dataclass(frozen=True)
class TierLimits:
    max_users: int
    max_requests_per_month: int
    max_concurrent_executions: int
    max_priority: str


TIER_LIMITS = {
    "basic": TierLimits(2, 50, 1, "normal"),
    "standard": TierLimits(10, 500, 3, "high"),
    "premium": TierLimits(50, 5_000, 10, "high"),
    "enterprise": TierLimits(1_000, 100_000, 50, "critical"),
}


def audit(session: Session, actor: Principal, action: str, target: str, **details: str) -> None:
    session.add(
        models.AuditEvent(
            id=new_id("aud"),
            actor=actor.display_name or actor.user_id or actor.worker_id,
            action=action,
            target=target,
            details=details,
        )
    )


# --- authentication -------------------------------------------------------------------------


def authenticate(session: Session, credentials: Credentials) -> Principal:
    """Turns a credential into a principal, or raises BadCredential (one message for every
    failure, so a caller learns nothing about which part was wrong)."""
    now = utcnow()
    if credentials.api_key:
        key = session.scalar(
            select(models.ApiKey).where(models.ApiKey.key_hash == hash_secret(credentials.api_key))
        )
        if key is None or key.revoked:
            raise BadCredential("unknown or revoked API key")
        client = session.get(models.Client, key.client_id)
        if client is None:
            raise BadCredential("unknown or revoked API key")
        key.last_used_at = now
        return Principal(
            kind="api_key",
            client_id=client.id,
            role="client",
            tier=client.tier,
            display_name=key.name,
            api_key_id=key.id,
            scopes=("requests.read", "requests.write"),
        )
    if credentials.session_token:
        row = session.scalar(
            select(models.Session).where(
                models.Session.token_hash == hash_secret(credentials.session_token)
            )
        )
        if row is None or row.revoked or row.expires_at <= now:
            raise BadCredential("unknown, expired or revoked session")
        user = session.get(models.User, row.user_id)
        if user is None or not user.active:
            raise BadCredential("unknown, expired or revoked session")
        row.expires_at = now + SESSION_LIFETIME  # sliding expiry
        return user_principal(session, user)
    if credentials.worker_id and credentials.worker_token:
        cred = session.get(models.WorkerCredential, credentials.worker_id)
        if cred is None or cred.revoked or cred.token_hash != hash_secret(credentials.worker_token):
            raise BadCredential("unknown or revoked worker credential")
        return Principal(
            kind=cred.kind,
            worker_id=cred.worker_id,
            display_name=cred.worker_id,
            scopes=("internal",),
        )
    raise BadCredential("no credential: send x-api-key, a session token or a bearer token")


def user_principal(session: Session, user: models.User) -> Principal:
    tier = ""
    if user.client_id:
        client = session.get(models.Client, user.client_id)
        tier = client.tier if client else ""
    return Principal(
        kind="user",
        user_id=user.id,
        client_id=user.client_id or "",
        role=user.role,
        tier=tier,
        display_name=user.email,
    )


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: datetime
    principal: Principal


def login(session: Session, email: str, password: str) -> LoginResult:
    problems = Violations()
    problems.check(bool(email.strip()), "email", "is required")
    problems.check(bool(password), "password", "is required")
    problems.raise_if_any()
    email = email.strip().lower()
    now = utcnow()
    email_hash = hashlib.sha256(email.encode()).hexdigest()
    failures = session.get(models.LoginFailure, email_hash)
    if failures is not None and now - failures.window_start > LOGIN_WINDOW:
        failures.failures, failures.window_start = 0, now
    if failures is not None and failures.failures >= MAX_LOGIN_FAILURES:
        wait = (failures.window_start + LOGIN_WINDOW - now).total_seconds()
        raise LoginThrottled("too many failed sign-ins; try again later", retry_after=wait)
    user = session.scalar(select(models.User).where(models.User.email == email))
    if user is None or not user.active or not password_matches(password, user.password_hash):
        if failures is None:
            failures = models.LoginFailure(email_hash=email_hash, failures=0, window_start=now)
            session.add(failures)
        failures.failures += 1
        raise BadCredential("wrong email or password")
    if failures is not None:
        session.delete(failures)
    token = new_secret("bws_")
    expires_at = now + SESSION_LIFETIME
    session.add(
        models.Session(
            id=new_id("ses"), token_hash=hash_secret(token), user_id=user.id, expires_at=expires_at
        )
    )
    user.last_login_at = now
    return LoginResult(token, expires_at, user_principal(session, user))


def logout(session: Session, token: str) -> None:
    row = session.scalar(
        select(models.Session).where(models.Session.token_hash == hash_secret(token))
    )
    if row is not None:
        row.revoked = True


# --- bootstrap ------------------------------------------------------------------------------


def bootstrap(session: Session, admin_email: str, admin_password: str, credentials: str) -> None:
    """First-start set-up: an admin when none exists, and the given worker/service credentials
    (`id:kind:sha256hex`, comma-separated) installed or replaced."""
    has_admin = session.scalar(select(func.count()).where(models.User.role == "admin"))
    if not has_admin and admin_email and admin_password:
        session.add(
            models.User(
                id=new_id("usr"),
                email=admin_email.strip().lower(),
                display_name="Administrator",
                role="admin",
                password_hash=hash_password(admin_password),
            )
        )
    for entry in filter(None, (part.strip() for part in credentials.split(","))):
        worker_id, kind, token_hash = entry.split(":")
        row = session.get(models.WorkerCredential, worker_id)
        if row is None:
            session.add(
                models.WorkerCredential(worker_id=worker_id, kind=kind, token_hash=token_hash)
            )
        else:
            row.kind, row.token_hash, row.revoked, row.rotated_at = (
                kind,
                token_hash,
                False,
                utcnow(),
            )


# --- clients, keys, credentials -------------------------------------------------------------


def get_client(session: Session, principal: Principal, client_id: str) -> models.Client:
    client = session.get(models.Client, client_id) if client_id else None
    if client is None or not principal.visible_client(client.id):
        raise ClientNotFound(f"client {client_id!r} not found")
    return client


def create_client(
    session: Session,
    actor: Principal,
    *,
    company_name: str,
    contact_email: str,
    tier: str,
    monthly_budget_usd: float,
    industry: str,
    company_size: str,
) -> models.Client:
    problems = Violations()
    problems.check(bool(company_name.strip()), "client.company_name", "is required")
    problems.check("@" in contact_email, "client.contact_email", "must be an email address")
    problems.check(tier in TIERS, "client.tier", f"must be one of {', '.join(TIERS)}")
    problems.check(monthly_budget_usd >= 0, "client.monthly_budget_usd", "must not be negative")
    problems.raise_if_any()
    client = models.Client(
        id=new_id("cli"),
        company_name=company_name.strip(),
        contact_email=contact_email.strip(),
        tier=tier,
        monthly_budget_usd=monthly_budget_usd,
        industry=industry,
        company_size=company_size,
    )
    session.add(client)
    audit(session, actor, "client.create", f"clients/{client.id}", tier=tier)
    return client


def create_api_key(
    session: Session, actor: Principal, client_id: str, name: str
) -> tuple[models.ApiKey, str]:
    client = get_client(session, actor, client_id or actor.client_id)
    if not name.strip():
        raise InvalidArgument([], "name: is required")
    plaintext = new_secret(API_KEY_PREFIX)
    key = models.ApiKey(
        id=new_id("key"),
        client_id=client.id,
        name=name.strip(),
        prefix=plaintext[: len(API_KEY_PREFIX) + 8],
        key_hash=hash_secret(plaintext),
    )
    session.add(key)
    audit(session, actor, "api_key.create", f"api_keys/{key.id}", client_id=client.id)
    return key, plaintext


def revoke_api_key(session: Session, actor: Principal, api_key_id: str) -> models.ApiKey:
    key = session.get(models.ApiKey, api_key_id)
    if key is None or not actor.visible_client(key.client_id):
        raise ApiKeyNotFound(f"API key {api_key_id!r} not found")
    key.revoked = True
    audit(session, actor, "api_key.revoke", f"api_keys/{key.id}", client_id=key.client_id)
    return key


def create_worker_credential(
    session: Session, actor: Principal, worker_id: str, kind: str
) -> tuple[models.WorkerCredential, str]:
    problems = Violations()
    problems.check(
        bool(worker_id) and worker_id.replace("-", "").isalnum() and worker_id.islower(),
        "worker_id",
        "must be lower-case letters, digits and dashes",
    )
    problems.check(kind in ("worker", "service"), "kind", "must be worker or service")
    problems.raise_if_any()
    if session.get(models.WorkerCredential, worker_id) is not None:
        raise AlreadyExists(f"worker credential {worker_id!r} already exists")
    token = new_secret("bwt_")
    cred = models.WorkerCredential(worker_id=worker_id, kind=kind, token_hash=hash_secret(token))
    session.add(cred)
    audit(session, actor, "worker_credential.create", f"workers/{worker_id}", kind=kind)
    return cred, token
