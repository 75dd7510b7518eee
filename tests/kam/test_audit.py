"""The audit log records admin actions and key and credential changes, without secrets."""

from __future__ import annotations

import grpc

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2
from tests.common import Client
from tests.kam.helpers import PASSWORD, fails, kam, violated_fields


async def test_changes_are_recorded_with_actor_target_and_no_secrets(client: Client) -> None:
    async with kam(client.mesh) as k:
        user = await k.create_user(client.admin, "ann@staff.test", common_pb2.ROLE_SUPPORT)
        worker = await k.workers.CreateWorkerCredential(
            accounts_pb2.CreateWorkerCredentialRequest(worker_id="audited"), metadata=client.admin
        )
        keys = await k.keys.ListApiKeys(
            accounts_pb2.ListApiKeysRequest(client_id=client.client_id), metadata=client.admin
        )
        await k.keys.RevokeApiKey(
            accounts_pb2.RevokeApiKeyRequest(api_key_id=keys.api_keys[0].api_key_id),
            metadata=client.admin,
        )
        events = (
            await k.audit.ListAuditEvents(
                accounts_pb2.ListAuditEventsRequest(), metadata=client.admin
            )
        ).events
        actions = [e.action for e in events]
        assert actions[:3] == ["api_key.revoke", "worker_credential.create", "user.create"]
        assert {"client.create", "api_key.create"} <= set(actions)
        created = next(e for e in events if e.action == "user.create")
        assert created.target == f"users/{user.user_id}"
        assert created.actor.startswith(client.mesh.credentials.admin_email)
        assert created.details["role"] == "support"
        text = str(list(events))
        for secret in (PASSWORD, client.api_key, worker.token):
            assert secret not in text

        keys_only = await k.audit.ListAuditEvents(
            accounts_pb2.ListAuditEventsRequest(action_prefix="api_key."), metadata=client.admin
        )
        assert [e.action for e in keys_only.events] == ["api_key.revoke", "api_key.create"]
        page = await k.audit.ListAuditEvents(
            accounts_pb2.ListAuditEventsRequest(page_size=2), metadata=client.admin
        )
        assert len(page.events) == 2 and page.next_page_token
        rest = await k.audit.ListAuditEvents(
            accounts_pb2.ListAuditEventsRequest(page_token=page.next_page_token),
            metadata=client.admin,
        )
        assert [e.audit_event_id for e in [*page.events, *rest.events]] == [
            e.audit_event_id for e in events
        ]
        error = await fails(
            k.audit.ListAuditEvents(
                accounts_pb2.ListAuditEventsRequest(page_size=-1), metadata=client.admin
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"page_size"}
