"""Who is calling: credentials from metadata, the principal they stand for, and who may call what.

Every RPC except health and reflection is authenticated (by an `Authenticator`) and authorised
(by the service's access table, checked in `bitware_core.server`). KAM authenticates against its
own database; every other service asks KAM through `KamAuthenticator`, with a short cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import argon2

from bitware_core.errors import (
    ApiKeyScopeMissing,
    ClientNotFound,
    PermissionDenied,
    Unauthenticated,
)

API_KEY_HEADER = "x-api-key"
SESSION_HEADER = "x-bitware-session-token"
WORKER_ID_HEADER = "x-worker-id"
AUTHORIZATION_HEADER = "authorization"

# Caller tags used by access tables. A user's tag is its role; an API key acts as a client.
ADMIN, SUPPORT, CLIENT, WORKER, SERVICE = "admin", "support", "client", "worker", "service"
#: The people who run the mesh (no client, no machine).
STAFF = frozenset({ADMIN, SUPPORT})
READERS = frozenset({ADMIN, SUPPORT, CLIENT, SERVICE})
ANYONE = frozenset({ADMIN, SUPPORT, CLIENT, WORKER, SERVICE})
PUBLIC: frozenset[str] = frozenset()

# API key scopes. An RPC whose name starts with a reading verb needs READ, every other one
# WRITE; users, workers and services are not scoped (their tags and the logic decide).
READ, WRITE = "read", "write"
API_KEY_SCOPES = (READ, WRITE)
_READING_VERBS = ("Get", "List", "Watch", "Authenticate")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `kind` is `user`, `api_key`, `worker` or `service`."""

    kind: str
    user_id: str = ""
    client_id: str = ""
    worker_id: str = ""
    role: str = ""
    tier: str = ""
    scopes: tuple[str, ...] = ()
    display_name: str = ""
    api_key_id: str = ""

    @property
    def tag(self) -> str:
        if self.kind == "user":
            return self.role
        return {"api_key": CLIENT, "worker": WORKER, "service": SERVICE}[self.kind]

    @property
    def sees_all_clients(self) -> bool:
        return self.tag in (ADMIN, SUPPORT, SERVICE)

    def visible_client(self, client_id: str) -> bool:
        """True when this caller may see data of `client_id`."""
        return self.sees_all_clients or (bool(client_id) and client_id == self.client_id)

    def acting_for(self, client_id: str) -> str:
        """The client a call names, checked. Staff may name any (empty: none in particular); a
        client principal acts for its own, and naming another client is answered as if that
        client did not exist (NOT_FOUND, never a hint)."""
        if self.sees_all_clients:
            return client_id
        if client_id and client_id != self.client_id:
            raise ClientNotFound(client_id)
        return self.client_id


#: The principal of the call being served (set by the server interceptor).
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("no authenticated caller")
    return principal


@dataclass(frozen=True)
class Credentials:
    """The credential a call carries; at most one kind is used (API key, session, then worker)."""

    api_key: str = ""
    session_token: str = ""
    worker_id: str = ""
    worker_token: str = field(default="", repr=False)

    @classmethod
    def from_metadata(cls, metadata: Sequence[tuple[str, str | bytes]]) -> Credentials:
        values = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in metadata}
        bearer = values.get(AUTHORIZATION_HEADER, "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        return cls(
            api_key=values.get(API_KEY_HEADER, ""),
            session_token=values.get(SESSION_HEADER, ""),
            worker_id=values.get(WORKER_ID_HEADER, ""),
            worker_token=token,
        )

    @property
    def present(self) -> bool:
        return bool(self.api_key or self.session_token or (self.worker_id and self.worker_token))

    def cache_key(self) -> str:
        raw = f"{self.api_key}\0{self.session_token}\0{self.worker_id}\0{self.worker_token}"
        return hash_secret(raw)


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret (API keys, tokens). Passwords use `hash_password`."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    """A random secret with a recognisable prefix, for example `bwk_…` for API keys."""
    return f"{prefix}{secrets.token_urlsafe(32)}"


#: Argon2id with the first of OWASP's equivalent settings (Password Storage Cheat Sheet): 19 MiB
#: of memory, 2 passes, 1 lane. `argon2-cffi` because hashlib has no Argon2.
_ARGON2 = argon2.PasswordHasher(
    time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID
)


def hash_password(password: str) -> str:
    """A salted Argon2id hash in the PHC format, `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`."""
    return _ARGON2.hash(password)


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored`: an Argon2id hash, or a salted scrypt hash
    (`scrypt$n$r$p$salt$hash`, hex) written before passwords moved to Argon2id."""
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored)
    try:
        return _ARGON2.verify(stored, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def password_needs_rehash(stored: str) -> bool:
    """True for a hash older or weaker than `hash_password` makes now (scrypt, or Argon2 with
    other parameters): sign-in replaces it while it has the password in hand."""
    if stored.startswith("scrypt$"):
        return True
    try:
        return _ARGON2.check_needs_rehash(stored)
    except argon2.exceptions.InvalidHashError:
        return True


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return secrets.compare_digest(candidate.hex(), digest)


class Authenticator(Protocol):
    """Turns a call's credentials into a principal, or raises `Unauthenticated`."""

    async def authenticate(self, credentials: Credentials) -> Principal: ...


def required_scope(method: str) -> str:
    """The API key scope `/pkg.Service/Method` needs: READ for Get*, List*, Watch* and
    Authenticate (they change nothing), WRITE for every other RPC."""
    name = method.rsplit("/", 1)[-1]
    return READ if name.startswith(_READING_VERBS) else WRITE


def authorise(principal: Principal, allowed: frozenset[str], method: str) -> None:
    """Refuses a caller whose tag the method's access table does not list, or an API key
    without the scope the method needs."""
    if principal.tag not in allowed:
        raise PermissionDenied(f"{principal.tag} callers may not call {method}")
    if principal.kind == "api_key" and (scope := required_scope(method)) not in principal.scopes:
        raise ApiKeyScopeMissing(scope, method, tuple(principal.scopes))


class KamAuthenticator:
    """Asks KAM who a caller is, remembering answers for `ttl` seconds (a revoked key stops
    working within that time). Failures are not cached."""

    def __init__(
        self, ask_kam: Callable[[Credentials], Awaitable[Principal]], ttl: float = 10.0
    ) -> None:
        self._ask = ask_kam
        self._ttl = min(ttl, 30.0)
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, credentials: Credentials) -> Principal:
        if not credentials.present:
            raise Unauthenticated(
                "no credential: send x-api-key, a session token or a bearer token"
            )
        key = credentials.cache_key()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await self._ask(credentials)
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self._ttl, principal)
        return principal
