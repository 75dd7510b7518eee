"""API keys of client programs and credentials of workers and services.

Each secret is a random value shown once to its creator and stored only as a SHA-256 hash (the
value has 256 bits of entropy, so a fast hash is enough; passwords get Argon2id instead). Every
change is written to the audit log in the same transaction, without the secret.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import API_KEY_SCOPES, Principal, hash_secret, new_secret
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.errors import AlreadyExists, PermissionDenied, Violations
from kam_server import audit, identity, models
from kam_server.accounts import named_or_own_client
from kam_server.errors import ApiKeyNotFound, WorkerCredentialNotFound

API_KEY_PREFIX = "bwk_"
WORKER_TOKEN_PREFIX = "bwt_"
WORKER_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,98}[a-z0-9])?$")
WORKER_ID_RULE = (
    "must be 1 to 100 lower-case letters, digits and dashes, not starting or ending with a dash"
)


def _key_manager(actor: Principal) -> None:
    """Keys are managed by people: a leaked key must not be able to mint or revoke keys."""
    if actor.kind != "user":
        raise PermissionDenied("API keys are managed by signed-in users, not by API keys")


# --- API keys -------------------------------------------------------------------------------


def create_api_key(
    session: Session,
    actor: Principal,
    client_id: str,
    name: str,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[models.ApiKey, str]:
    """A new key of the client: `scopes` empty or None means every scope, `expires_at` None
    means the key never expires."""
    _key_manager(actor)
    client = named_or_own_client(
        session, actor, client_id
    )  # before anything is said about the input
    scopes = list(scopes or API_KEY_SCOPES)
    problems = Violations()
    problems.check(bool(name.strip()), "name", "is required")
    problems.check(len(name) <= 200, "name", "must be at most 200 characters")
    for index, scope in enumerate(scopes):
        problems.check(
            scope in API_KEY_SCOPES, f"scopes[{index}]", f"must be {' or '.join(API_KEY_SCOPES)}"
        )
        problems.check(scope not in scopes[:index], f"scopes[{index}]", "is given twice")
    problems.check(
        expires_at is None or expires_at > utcnow(), "expire_time", "must be in the future"
    )
    problems.raise_if_any()
    plaintext = new_secret(API_KEY_PREFIX)
    key = models.ApiKey(
        id=new_id("key"),
        client_id=client.id,
        name=name.strip(),
        prefix=plaintext[: len(API_KEY_PREFIX) + 8],
        key_hash=hash_secret(plaintext),
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(key)
    audit.record(
        session,
        actor,
        "api_key.create",
        f"api_keys/{key.id}",
        client_id=client.id,
        name=key.name,
        prefix=key.prefix,
        scopes=",".join(scopes),
        expires_at=expires_at.isoformat() if expires_at else "never",
    )
    return key, plaintext


def list_api_keys(
    session: Session, actor: Principal, client_id: str, page_size: int, page_token: str
) -> tuple[list[models.ApiKey], str]:
    offset, limit = page_window(page_size, page_token)
    client = named_or_own_client(session, actor, client_id)
    query = (
        select(models.ApiKey)
        .where(models.ApiKey.client_id == client.id)
        .order_by(models.ApiKey.created_at.desc(), models.ApiKey.id.desc())
    )
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def revoke_api_key(session: Session, actor: Principal, api_key_id: str) -> models.ApiKey:
    _key_manager(actor)
    key = session.get(models.ApiKey, api_key_id) if api_key_id else None
    if key is None or not actor.visible_client(key.client_id):
        raise ApiKeyNotFound(api_key_id)
    if not key.revoked:
        key.revoked = True
        identity.auth_changed(session)
        audit.record(
            session,
            actor,
            "api_key.revoke",
            f"api_keys/{key.id}",
            client_id=key.client_id,
            prefix=key.prefix,
        )
    return key


# --- worker and service credentials ---------------------------------------------------------


def create_worker_credential(
    session: Session, actor: Principal, worker_id: str, kind: str
) -> tuple[models.WorkerCredential, str]:
    problems = Violations()
    problems.check(bool(WORKER_ID.match(worker_id)), "worker_id", WORKER_ID_RULE)
    problems.check(kind in ("worker", "service"), "kind", "must be worker or service")
    problems.raise_if_any()
    if session.get(models.WorkerCredential, worker_id) is not None:
        raise AlreadyExists(f"worker credential {worker_id!r} already exists")
    token = new_secret(WORKER_TOKEN_PREFIX)
    cred = models.WorkerCredential(worker_id=worker_id, kind=kind, token_hash=hash_secret(token))
    session.add(cred)
    audit.record(session, actor, "worker_credential.create", f"workers/{worker_id}", kind=kind)
    return cred, token


def _credential(session: Session, worker_id: str) -> models.WorkerCredential:
    problems = Violations()
    problems.check(bool(worker_id), "worker_id", "is required")
    problems.raise_if_any()
    cred = session.get(models.WorkerCredential, worker_id)
    if cred is None:
        raise WorkerCredentialNotFound(worker_id)
    return cred


def rotate_worker_credential(
    session: Session, actor: Principal, worker_id: str
) -> tuple[models.WorkerCredential, str]:
    cred = _credential(session, worker_id)
    token = new_secret(WORKER_TOKEN_PREFIX)
    cred.token_hash = hash_secret(token)
    cred.rotated_at = utcnow()
    cred.revoked = False
    identity.auth_changed(session)
    audit.record(session, actor, "worker_credential.rotate", f"workers/{worker_id}")
    return cred, token


def revoke_worker_credential(
    session: Session, actor: Principal, worker_id: str
) -> models.WorkerCredential:
    cred = _credential(session, worker_id)
    if not cred.revoked:
        cred.revoked = True
        identity.auth_changed(session)
        audit.record(session, actor, "worker_credential.revoke", f"workers/{worker_id}")
    return cred


def list_worker_credentials(
    session: Session, page_size: int, page_token: str
) -> tuple[list[models.WorkerCredential], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.WorkerCredential).order_by(models.WorkerCredential.worker_id)
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))
