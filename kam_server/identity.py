"""Who a caller is: credentials to principals, sign-in with throttling, sessions, and the
first-start bootstrap of an admin and the mesh's own worker and service credentials."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bitware_core.auth import (
    Credentials,
    Principal,
    hash_password,
    hash_secret,
    new_secret,
    password_needs_rehash,
)
from bitware_core.auth import verify_password as password_matches
from bitware_core.db import Database, PerEngine, new_id, utcnow
from bitware_core.errors import FailedPrecondition, PermissionDenied, Violations
from kam_server import audit, models
from kam_server.errors import ApiKeyExpired, BadCredential, LoginThrottled

SESSION_LIFETIME = timedelta(hours=24)
SESSION_PREFIX = "bws_"
MAX_LOGIN_FAILURES = 5
LOGIN_WINDOW = timedelta(minutes=15)
#: How long KAM trusts an API key or worker credential it has checked (sessions are always
#: checked: their expiry slides on use). Any change to keys, credentials, clients, users or
#: sessions made in this process empties the cache at once (`auth_changed`).
CREDENTIAL_CACHE_SECONDS = 2.0
#: `api_keys.last_used_at` is written at most this often per key.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Checked against when the email is unknown, so that a wrong email costs as long as a wrong
# password and timing does not reveal which addresses exist.
_DUMMY_HASH = hash_password("not-a-password-of-anyone")


# --- authentication -------------------------------------------------------------------------


def authenticate(session: Session, credentials: Credentials) -> Principal:
    """Turns a credential into a principal, or raises BadCredential (one message for every
    failure, so a caller learns nothing about which part was wrong)."""
    now = utcnow()
    if credentials.api_key:
        key = session.scalar(
            select(models.ApiKey).where(models.ApiKey.key_hash == hash_secret(credentials.api_key))
        )
        client = session.get(models.Client, key.client_id) if key and not key.revoked else None
        if key is None or client is None:
            raise BadCredential("unknown or revoked API key")
        if key.expires_at is not None and key.expires_at <= now:
            # Only the key's holder can get this far, so saying why costs nothing.
            raise ApiKeyExpired(key.id, key.expires_at)
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            key.last_used_at = now
        return Principal(
            kind="api_key",
            client_id=client.id,
            role="client",
            tier=client.tier,
            display_name=key.name,
            api_key_id=key.id,
            scopes=tuple(key.scopes),
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


class CredentialCache:
    """Principals of recently checked API keys and worker credentials, per database.

    An answer is only kept if nothing that affects credentials committed while it was looked
    up (`generation`), so a lookup racing a revocation cannot store the revoked key."""

    def __init__(self, ttl: float = CREDENTIAL_CACHE_SECONDS) -> None:
        self.ttl = ttl
        self.generation = 0
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        hit = self._entries.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, generation: int, key: str, principal: Principal) -> None:
        with self._lock:
            if generation != self.generation:
                return
            now = time.monotonic()
            if len(self._entries) > 10_000:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            self._entries[key] = (now + self.ttl, principal)

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1
            self._entries = {}


cache_for = PerEngine(CredentialCache)


def auth_changed(session: Session) -> None:
    """Called by every change that can make a credential invalid or alter its principal
    (revoke, rotate, suspend, logout, user and client changes): empties this database's
    credential cache now and again when `session` commits."""
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    cache = cache_for(engine)
    cache.invalidate()
    if not session.info.get("auth_changed"):
        session.info["auth_changed"] = True
        event.listen(session, "after_commit", lambda _session: cache.invalidate(), once=True)


def _cacheable(credentials: Credentials) -> bool:
    """API keys and worker credentials; not sessions (each use slides the expiry)."""
    if credentials.api_key:
        return True
    return not credentials.session_token and bool(
        credentials.worker_id and credentials.worker_token
    )


async def authenticate_cached(db: Database, credentials: Credentials) -> Principal:
    """`authenticate`, answered from the in-process cache for CREDENTIAL_CACHE_SECONDS."""
    if not _cacheable(credentials):
        return await db.run(lambda s: authenticate(s, credentials))
    cache = cache_for(db.engine)
    key = credentials.cache_key()
    principal = cache.get(key)
    if principal is not None:
        return principal
    generation = cache.generation
    principal = await db.run(lambda s: authenticate(s, credentials))
    cache.put(generation, key, principal)
    return principal


async def check_credential(
    db: Database, caller: Principal, credentials: Credentials | None, field: str = ""
) -> Principal:
    """Who a credential names, asked by `caller`: the caller itself when none is given.
    Another caller's credential only services and workers may check (they check their own
    callers'): PERMISSION_DENIED for anyone else. `field` names the credential given
    (`api_key`, `session_token` or `worker`), for INVALID_ARGUMENT when it is empty."""
    if credentials is None:
        return caller
    if caller.kind not in ("service", "worker"):
        raise PermissionDenied("only services and workers may check another caller's credential")
    problems = Violations()
    if field == "worker":
        problems.check(bool(credentials.worker_id), "worker.worker_id", "is required")
        problems.check(bool(credentials.worker_token), "worker.token", "is required")
    else:
        problems.check(credentials.present, field, "must not be empty")
    problems.raise_if_any()
    return await authenticate_cached(db, credentials)


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


# --- sign-in --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    token: str
    expires_at: datetime
    principal: Principal


def _email_key(email: str) -> str:
    return hash_secret(f"login:{email}")


def login(session: Session, email: str, password: str, peer: str = "") -> LoginResult:
    """Signs a user in. A wrong email and a wrong password fail alike (BadCredential); after
    MAX_LOGIN_FAILURES failures in LOGIN_WINDOW for one email, even the right password is refused
    until the window ends. The caller records failures with `record_login_failure` in a
    transaction of its own (this one rolls back with the error).

    A success is written to the audit log (`auth.login`, with the caller's address `peer`), and
    a password hash older or weaker than today's (scrypt) is replaced by an Argon2id one."""
    problems = Violations()
    problems.check(bool(email.strip()), "email", "is required")
    problems.check(bool(password), "password", "is required")
    problems.raise_if_any()
    email = email.strip().lower()
    now = utcnow()
    failures = session.get(models.LoginFailure, _email_key(email))
    in_window = failures is not None and now - failures.window_start <= LOGIN_WINDOW
    if failures is not None and in_window and failures.failures >= MAX_LOGIN_FAILURES:
        wait = (failures.window_start + LOGIN_WINDOW - now).total_seconds()
        raise LoginThrottled(retry_after=max(1.0, wait))
    user = session.scalar(select(models.User).where(models.User.email == email))
    matches = password_matches(password, user.password_hash if user else _DUMMY_HASH)
    if user is None or not user.active or not matches:
        raise BadCredential("wrong email or password")
    if failures is not None:
        session.delete(failures)
    details = {"peer": peer}
    if password_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        details["password_rehashed"] = "argon2id"
    token = new_secret(SESSION_PREFIX)
    expires_at = now + SESSION_LIFETIME
    session.add(
        models.Session(
            id=new_id("ses"), token_hash=hash_secret(token), user_id=user.id, expires_at=expires_at
        )
    )
    user.last_login_at = now
    principal = user_principal(session, user)
    audit.record(session, principal, "auth.login", f"users/{user.id}", **details)
    return LoginResult(token, expires_at, principal)


async def sign_in(db: Database, email: str, password: str, peer: str = "") -> LoginResult:
    """`login`; a failure is recorded (`record_login_failure`) in a transaction of its own, as
    the failed one rolled back, and raised."""
    try:
        return await db.run(lambda s: login(s, email, password, peer))
    except (BadCredential, LoginThrottled) as error:
        throttled = isinstance(error, LoginThrottled)
        await db.run(lambda s: record_login_failure(s, email, peer, throttled))
        raise


def record_login_failure(session: Session, email: str, peer: str, throttled: bool) -> None:
    """Writes a failed sign-in to the audit log (`auth.login_failed`: the email as given, never
    the password) and, unless it was refused for throttling, counts it for `email` (stored
    hashed: the failures table reveals no addresses)."""
    email = email.strip().lower()
    user = session.scalar(select(models.User.id).where(models.User.email == email))
    audit.record(
        session,
        email[:200] or "(no email)",
        "auth.login_failed",
        f"users/{user}" if user else "users/unknown",
        peer=peer,
        reason="throttled" if throttled else "wrong email or password",
    )
    if throttled:
        return
    now = utcnow()
    key = _email_key(email)
    failures = session.get(models.LoginFailure, key)
    if failures is None:
        session.add(models.LoginFailure(email_hash=key, failures=1, window_start=now))
    elif now - failures.window_start > LOGIN_WINDOW:
        failures.failures, failures.window_start = 1, now
    else:
        failures.failures += 1


def logout(session: Session, principal: Principal, token: str) -> None:
    """Ends the session of a user who signed in with `token` (FAILED_PRECONDITION for a caller
    that did not: an API key or a worker has no session to end)."""
    if not token or principal.kind != "user":
        raise FailedPrecondition("sign out needs the session token you signed in with")
    row = session.scalar(
        select(models.Session).where(models.Session.token_hash == hash_secret(token))
    )
    if row is not None:
        row.revoked = True
        auth_changed(session)


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
    auth_changed(session)
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
