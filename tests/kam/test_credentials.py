"""API keys and worker credentials: created once, listed without secrets, revoked and rotated;
and no secret anywhere in the KAM database."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2
from sqlalchemy import select, update

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, auth_pb2
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.auth import hash_secret
from bitware_core.config import AuthSettings, QueueSettings, Settings
from bitware_mesh.inprocess import start_mesh
from kam_server import identity, models
from tests.common import Client, make_client
from tests.kam.helpers import PASSWORD, client_user, fails, kam, violated_fields


async def test_api_keys_are_created_listed_in_pages_and_revoked(client: Client) -> None:
    async with kam(client.mesh) as k:
        created = [
            await k.keys.CreateApiKey(
                accounts_pb2.CreateApiKeyRequest(client_id=client.client_id, name=f"key {i}"),
                metadata=client.admin,
            )
            for i in range(3)
        ]
        for response in created:
            assert response.key.startswith("bwk_") and response.key.startswith(
                response.api_key.prefix
            )
            assert len(response.api_key.prefix) == 12
        await k.whoami((("x-api-key", created[0].key),))  # marks it used

        listed, token = [], ""
        while True:
            page = await k.keys.ListApiKeys(
                accounts_pb2.ListApiKeysRequest(
                    client_id=client.client_id, page_size=2, page_token=token
                ),
                metadata=client.admin,
            )
            listed += page.api_keys
            token = page.next_page_token
            if not token:
                break
        assert [key.name for key in listed] == ["key 2", "key 1", "key 0", "tests"]  # newest first
        by_name = {key.name: key for key in listed}
        assert by_name["key 0"].HasField("last_used_time")
        assert not by_name["key 1"].HasField("last_used_time")
        assert all(key.HasField("create_time") and not key.revoked for key in listed)

        revoked = await k.keys.RevokeApiKey(
            accounts_pb2.RevokeApiKeyRequest(api_key_id=created[0].api_key.api_key_id),
            metadata=client.admin,
        )
        assert revoked.api_key.revoked
        # KAM refuses a revoked key at once.
        await fails(k.whoami((("x-api-key", created[0].key),)), grpc.StatusCode.UNAUTHENTICATED)


async def test_client_users_manage_their_own_keys_but_keys_cannot_mint_keys(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        session = await client_user(k, client)
        made = await k.keys.CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(name="ci"), metadata=session
        )
        assert made.api_key.client_id == client.client_id
        mine = await k.keys.ListApiKeys(accounts_pb2.ListApiKeysRequest(), metadata=client.key)
        assert {key.name for key in mine.api_keys} == {"ci", "tests"}
        await fails(
            k.keys.CreateApiKey(accounts_pb2.CreateApiKeyRequest(name="more"), metadata=client.key),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        error = await fails(
            k.keys.CreateApiKey(accounts_pb2.CreateApiKeyRequest(name=" "), metadata=session),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"name"}
        error = await fails(
            k.keys.CreateApiKey(accounts_pb2.CreateApiKeyRequest(name="x"), metadata=client.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"client_id"}


async def test_a_revoked_key_stops_working_on_other_services_within_the_auth_cache(
    tmp_path: Path,
) -> None:
    mesh = await start_mesh(
        tmp_path,
        Settings(queue=QueueSettings(heartbeat_interval=0.5), auth=AuthSettings(cache_seconds=0.5)),
    )
    try:
        client = await make_client(mesh)
        async with (
            kam(mesh) as k,
            grpc.aio.insecure_channel(mesh.orchestrator.address) as channel,
        ):
            orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            queue = orchestrator_pb2.GetQueueRequest()
            await orchestrator.GetQueue(queue, metadata=client.key, timeout=5)
            keys = await k.keys.ListApiKeys(
                accounts_pb2.ListApiKeysRequest(client_id=client.client_id), metadata=client.admin
            )
            await k.keys.RevokeApiKey(
                accounts_pb2.RevokeApiKeyRequest(api_key_id=keys.api_keys[0].api_key_id),
                metadata=client.admin,
            )
            await asyncio.sleep(0.6)
            await fails(
                orchestrator.GetQueue(queue, metadata=client.key, timeout=5),
                grpc.StatusCode.UNAUTHENTICATED,
            )
    finally:
        await mesh.stop()


async def test_worker_credentials_are_created_rotated_listed_and_revoked(client: Client) -> None:
    async with kam(client.mesh) as k:
        created = await k.workers.CreateWorkerCredential(
            accounts_pb2.CreateWorkerCredentialRequest(worker_id="granulator-9"),
            metadata=client.admin,
        )
        assert created.credential.kind == common_pb2.PRINCIPAL_KIND_WORKER
        old = (("authorization", f"Bearer {created.token}"), ("x-worker-id", "granulator-9"))
        assert (await k.whoami(old)).worker_id == "granulator-9"

        rotated = await k.workers.RotateWorkerCredential(
            accounts_pb2.RotateWorkerCredentialRequest(worker_id="granulator-9"),
            metadata=client.admin,
        )
        assert rotated.token != created.token
        new = (("authorization", f"Bearer {rotated.token}"), ("x-worker-id", "granulator-9"))
        await fails(k.whoami(old), grpc.StatusCode.UNAUTHENTICATED)
        assert (await k.whoami(new)).kind == common_pb2.PRINCIPAL_KIND_WORKER

        listed = await k.workers.ListWorkerCredentials(
            accounts_pb2.ListWorkerCredentialsRequest(page_size=2), metadata=client.admin
        )
        assert len(listed.credentials) == 2 and listed.next_page_token
        everything = await k.workers.ListWorkerCredentials(
            accounts_pb2.ListWorkerCredentialsRequest(), metadata=client.admin
        )
        ids = [c.worker_id for c in everything.credentials]
        assert ids == sorted(ids) and {"granulator-9", "orchestrator", "kam"} <= set(ids)

        await k.workers.RevokeWorkerCredential(
            accounts_pb2.RevokeWorkerCredentialRequest(worker_id="granulator-9"),
            metadata=client.admin,
        )
        await fails(k.whoami(new), grpc.StatusCode.UNAUTHENTICATED)

        await fails(
            k.workers.CreateWorkerCredential(
                accounts_pb2.CreateWorkerCredentialRequest(worker_id="granulator-9"),
                metadata=client.admin,
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        error = await fails(
            k.workers.CreateWorkerCredential(
                accounts_pb2.CreateWorkerCredentialRequest(
                    worker_id="Bad Id", kind=common_pb2.PRINCIPAL_KIND_USER
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"worker_id", "kind"}
        await fails(
            k.workers.RotateWorkerCredential(
                accounts_pb2.RotateWorkerCredentialRequest(worker_id="ghost"),
                metadata=client.admin,
            ),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_no_secret_is_stored_in_plain_text(client: Client) -> None:
    secrets = [client.api_key, client.admin_session, client.mesh.credentials.admin_password]
    secrets += client.mesh.credentials.tokens.values()
    async with kam(client.mesh) as k:
        await k.create_user(client.admin, "ann@acme.test", common_pb2.ROLE_CLIENT, client.client_id)
        secrets += [PASSWORD, (await k.login("ann@acme.test"))[0][1]]
        key = await k.keys.CreateApiKey(
            accounts_pb2.CreateApiKeyRequest(client_id=client.client_id, name="second"),
            metadata=client.admin,
        )
        worker = await k.workers.CreateWorkerCredential(
            accounts_pb2.CreateWorkerCredentialRequest(worker_id="scan-me"), metadata=client.admin
        )
        rotated = await k.workers.RotateWorkerCredential(
            accounts_pb2.RotateWorkerCredentialRequest(worker_id="scan-me"), metadata=client.admin
        )
        secrets += [key.key, worker.token, rotated.token]
        await k.auth.Authenticate(auth_pb2.AuthenticateRequest(), metadata=client.key)
        await fails(k.login("ann@acme.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED)

    database = Path(client.mesh.kam.db.url.removeprefix("sqlite:///"))
    client.mesh.kam.db.run_sync(lambda s: s.connection().exec_driver_sql("PRAGMA wal_checkpoint"))
    found: list[str] = []
    with sqlite3.connect(database) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        assert {"users", "sessions", "api_keys", "worker_credentials", "audit_events"} <= set(
            tables
        )
        cells = 0
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if not isinstance(value, (str, bytes)):
                        continue
                    text = value.decode(errors="replace") if isinstance(value, bytes) else value
                    cells += 1
                    found += [f"{table}: {secret[:6]}…" for secret in secrets if secret in text]
    assert cells > 20
    assert not found, found
    # The raw file too (WAL included), in case a secret sits in a page SQL no longer shows.
    for path in (database, Path(f"{database}-wal")):
        if path.exists():
            raw = path.read_bytes()
            assert not [s[:6] for s in secrets if s.encode() in raw]


async def test_kam_answers_a_known_key_from_its_cache_and_writes_last_used_once_a_minute(
    client: Client,
) -> None:
    db = client.mesh.kam.db
    key_hash = hash_secret(client.api_key)

    def last_used() -> datetime | None:
        return db.run_sync(
            lambda s: s.scalar(
                select(models.ApiKey.last_used_at).where(models.ApiKey.key_hash == key_hash)
            )
        )

    async with kam(client.mesh) as k:
        await k.whoami(client.key)
        first = last_used()
        assert first is not None
        identity.cache_for(db.engine).invalidate()  # as if the cache had expired
        await k.whoami(client.key)
        assert last_used() == first  # used again within the minute: not written again

        # A change made to the database behind KAM's back shows once the cache has expired.
        db.run_sync(
            lambda s: s.execute(
                update(models.ApiKey).where(models.ApiKey.key_hash == key_hash).values(revoked=True)
            )
        )
        await k.whoami(client.key)  # cached
        await asyncio.sleep(identity.CREDENTIAL_CACHE_SECONDS + 0.1)
        await fails(k.whoami(client.key), grpc.StatusCode.UNAUTHENTICATED)


async def test_a_tier_change_shows_at_once_for_a_cached_key(client: Client) -> None:
    async with kam(client.mesh) as k:
        before = await k.whoami(client.key)
        await k.clients.UpdateClient(
            accounts_pb2.UpdateClientRequest(
                client=accounts_pb2.Client(
                    client_id=client.client_id, tier=common_pb2.TIER_PREMIUM
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["tier"]),
            ),
            metadata=client.admin,
        )
        after = await k.whoami(client.key)
        assert before.tier != after.tier == common_pb2.TIER_PREMIUM
