"""Passwords at rest (Argon2id, old scrypt hashes upgraded at sign-in) and the audit trail of
sign-ins, successful and failed, which never holds the password."""

from __future__ import annotations

import hashlib
import secrets

import grpc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2
from kam_server import models
from tests.common import Client
from tests.kam.helpers import PASSWORD, Kam, fails, kam

#: OWASP's first Argon2id setting: 19 MiB, 2 passes, 1 lane.
ARGON2ID_OWASP = "$argon2id$v=19$m=19456,t=2,p=1$"


async def stored_hash(client: Client, email: str) -> str:
    def read(session: Session) -> str:
        return str(
            session.scalar(select(models.User.password_hash).where(models.User.email == email))
        )

    return await client.mesh.kam.db.run(read)


def scrypt_hash(password: str) -> str:
    """The format KAM wrote before Argon2id: `scrypt$n$r$p$salt$hash` (hex), N=2^14."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${2**14}$8$1${salt.hex()}${digest.hex()}"


async def sign_in_events(k: Kam, client: Client) -> list[accounts_pb2.AuditEvent]:
    listed = await k.audit.ListAuditEvents(
        accounts_pb2.ListAuditEventsRequest(action_prefix="auth.", page_size=200),
        metadata=client.admin,
        timeout=10,
    )
    return list(listed.events)


async def test_passwords_are_stored_as_argon2id_with_owasp_parameters(client: Client) -> None:
    async with kam(client.mesh) as k:
        await k.create_user(client.admin, "new@staff.test", common_pb2.ROLE_SUPPORT)
        await k.login("new@staff.test")
    stored = await stored_hash(client, "new@staff.test")
    assert stored.startswith(ARGON2ID_OWASP) and PASSWORD not in stored
    # The first admin (bootstrap) too.
    admin = await stored_hash(client, client.mesh.credentials.admin_email)
    assert admin.startswith(ARGON2ID_OWASP)


async def test_an_old_scrypt_hash_is_replaced_by_argon2id_at_the_next_sign_in(
    client: Client,
) -> None:
    email = "old@staff.test"
    async with kam(client.mesh) as k:
        await k.create_user(client.admin, email, common_pb2.ROLE_SUPPORT)
        old = scrypt_hash(PASSWORD)

        def downgrade(session: Session) -> None:
            session.execute(
                update(models.User).where(models.User.email == email).values(password_hash=old)
            )

        await client.mesh.kam.db.run(downgrade)
        # A wrong password is refused against the scrypt hash and changes nothing.
        await fails(k.login(email, "not the password"), grpc.StatusCode.UNAUTHENTICATED)
        assert await stored_hash(client, email) == old

        await k.login(email)
        upgraded = await stored_hash(client, email)
        assert upgraded.startswith(ARGON2ID_OWASP)
        # The new hash signs in, and is not replaced again.
        await k.login(email)
        assert await stored_hash(client, email) == upgraded
        logins = [e for e in await sign_in_events(k, client) if e.action == "auth.login"]
    rehashed = [e.details.get("password_rehashed", "") for e in logins if e.actor.startswith(email)]
    assert rehashed == ["", "argon2id"]  # newest first


async def test_sign_ins_and_failed_sign_ins_are_audited_without_the_password(
    client: Client,
) -> None:
    wrong = "Tr0ub4dor&3-wrong"
    async with kam(client.mesh) as k:
        user = await k.create_user(client.admin, "ann@staff.test", common_pb2.ROLE_SUPPORT)
        await k.login("ANN@staff.test")
        await fails(k.login("ann@staff.test", wrong), grpc.StatusCode.UNAUTHENTICATED)
        await fails(k.login("ghost@nowhere.test", wrong), grpc.StatusCode.UNAUTHENTICATED)
        for _ in range(4):  # five failures in all throttle the email
            await fails(k.login("ann@staff.test", wrong), grpc.StatusCode.UNAUTHENTICATED)
        await fails(k.login("ann@staff.test"), grpc.StatusCode.RESOURCE_EXHAUSTED)
        events = await sign_in_events(k, client)

    ann = [e for e in events if e.target == f"users/{user.user_id}"]
    assert [e.action for e in ann] == ["auth.login_failed"] * 6 + ["auth.login"]
    assert ann[0].details["reason"] == "throttled"
    assert {e.details["reason"] for e in ann[1:6]} == {"wrong email or password"}
    success = ann[-1]
    assert success.actor == f"ann@staff.test ({user.user_id})"
    assert success.details["peer"].startswith("ipv4:127.0.0.1:")
    assert all(e.actor == "ann@staff.test" for e in ann[:-1])
    (ghost,) = [e for e in events if e.actor == "ghost@nowhere.test"]
    assert (ghost.action, ghost.target) == ("auth.login_failed", "users/unknown")
    # The admin's own sign-in (make_client) is there too.
    assert any(e.actor.startswith(client.mesh.credentials.admin_email) for e in events)
    text = str(events)
    assert wrong not in text and PASSWORD not in text
