"""Sign-in, sessions and Authenticate."""

from __future__ import annotations

from datetime import timedelta

import grpc
from google.rpc import error_details_pb2
from sqlalchemy import select, update

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import auth_pb2
from bitware_core.auth import hash_secret
from bitware_core.db import utcnow
from bitware_mesh.inprocess import InProcessMesh
from kam_server import models
from tests.common import Client
from tests.kam.helpers import details, fails, kam, reason, violated_fields


async def wrong_logins(mesh: InProcessMesh, email: str, times: int) -> None:
    async with kam(mesh) as k:
        for _ in range(times):
            await fails(k.login(email, "definitely wrong"), grpc.StatusCode.UNAUTHENTICATED)


async def test_repeated_failed_logins_are_throttled_with_a_retry_delay(client: Client) -> None:
    await wrong_logins(client.mesh, client.mesh.credentials.admin_email, 5)
    async with kam(client.mesh) as k:
        # Even the right password is refused while the email is throttled.
        error = await fails(
            k.login(client.mesh.credentials.admin_email, client.mesh.credentials.admin_password),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
    assert reason(error) == "LOGIN_THROTTLED"
    (retry,) = details(error, error_details_pb2.RetryInfo)
    assert 60 < retry.retry_delay.seconds <= 15 * 60


async def test_throttling_answers_the_same_for_an_unknown_email(client: Client) -> None:
    await wrong_logins(client.mesh, "nobody@nowhere.test", 5)
    async with kam(client.mesh) as k:
        error = await fails(
            k.login("nobody@nowhere.test", "whatever it is"), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        known = await fails(
            k.login("admin@bitware.local", "definitely wrong"), grpc.StatusCode.UNAUTHENTICATED
        )
        unknown = await fails(
            k.login("someone@nowhere.test", "definitely wrong"), grpc.StatusCode.UNAUTHENTICATED
        )
    assert reason(error) == "LOGIN_THROTTLED"
    assert details(error, error_details_pb2.RetryInfo)
    # A wrong password and an unknown email are indistinguishable.
    assert known.details() == unknown.details() and reason(known) == reason(unknown)


async def test_login_without_email_or_password_is_invalid(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.auth.Login(auth_pb2.LoginRequest(), timeout=5), grpc.StatusCode.INVALID_ARGUMENT
        )
    assert violated_fields(error) == {"email", "password"}


async def test_session_expiry_slides_on_use_and_an_expired_session_fails(client: Client) -> None:
    db = client.mesh.kam.db
    token = client.admin_session

    def set_expiry(delta: timedelta) -> None:
        db.run_sync(
            lambda s: s.execute(
                update(models.Session)
                .where(models.Session.token_hash == hash_secret(token))
                .values(expires_at=utcnow() + delta)
            )
        )

    def expiry() -> timedelta:
        row = db.run_sync(
            lambda s: s.scalar(
                select(models.Session.expires_at).where(
                    models.Session.token_hash == hash_secret(token)
                )
            )
        )
        assert row is not None
        return row - utcnow()

    async with kam(client.mesh) as k:
        set_expiry(timedelta(minutes=5))
        await k.whoami(client.admin)
        assert expiry() > timedelta(hours=23, minutes=59)  # used: 24 h again

        set_expiry(timedelta(seconds=-1))
        await fails(k.whoami(client.admin), grpc.StatusCode.UNAUTHENTICATED)


async def test_logout_revokes_the_session(client: Client) -> None:
    async with kam(client.mesh) as k:
        session = await k.login(
            client.mesh.credentials.admin_email, client.mesh.credentials.admin_password
        )
        assert (await k.whoami(session)).role == common_pb2.ROLE_ADMIN
        await k.auth.Logout(auth_pb2.LogoutRequest(), metadata=session)
        await fails(k.whoami(session), grpc.StatusCode.UNAUTHENTICATED)
        # Other sessions of the same user live on.
        assert (await k.whoami(client.admin)).role == common_pb2.ROLE_ADMIN
        # An API key has no session to end.
        await fails(
            k.auth.Logout(auth_pb2.LogoutRequest(), metadata=client.key),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


async def test_authenticate_turns_any_credential_into_a_principal(client: Client) -> None:
    service = client.worker("orchestrator")
    async with kam(client.mesh) as k:
        for request, kind in (
            (
                auth_pb2.AuthenticateRequest(api_key=client.api_key),
                common_pb2.PRINCIPAL_KIND_API_KEY,
            ),
            (
                auth_pb2.AuthenticateRequest(session_token=client.admin_session),
                common_pb2.PRINCIPAL_KIND_USER,
            ),
            (
                auth_pb2.AuthenticateRequest(
                    worker=auth_pb2.WorkerCredential(
                        worker_id="granulator-1",
                        token=client.mesh.credentials.tokens["granulator-1"],
                    )
                ),
                common_pb2.PRINCIPAL_KIND_WORKER,
            ),
        ):
            answer = await k.auth.Authenticate(request, metadata=service)
            assert answer.principal.kind == kind
        key = (
            await k.auth.Authenticate(
                auth_pb2.AuthenticateRequest(api_key=client.api_key), metadata=service
            )
        ).principal
        assert key.client_id == client.client_id and key.tier == common_pb2.TIER_STANDARD
        assert key.role == common_pb2.ROLE_CLIENT and key.api_key_id

        await fails(
            k.auth.Authenticate(auth_pb2.AuthenticateRequest(api_key="bwk_nope"), metadata=service),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        error = await fails(
            k.auth.Authenticate(
                auth_pb2.AuthenticateRequest(worker=auth_pb2.WorkerCredential(worker_id="x")),
                metadata=service,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"worker.token"}
        # Only services and workers may ask about someone else's credential.
        await fails(
            k.auth.Authenticate(
                auth_pb2.AuthenticateRequest(session_token=client.admin_session),
                metadata=client.key,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
