"""Clients: read, list with filters, update by field mask, suspend."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2
from tests.common import Client, make_client
from tests.kam.helpers import client_user, fails, kam, reason, violated_fields


async def test_clients_are_listed_in_pages_and_filtered_by_status_and_tier(client: Client) -> None:
    premium = await make_client(client.mesh, tier=common_pb2.TIER_PREMIUM)
    await make_client(client.mesh, tier=common_pb2.TIER_PREMIUM)
    async with kam(client.mesh) as k:
        await k.clients.SuspendClient(
            accounts_pb2.SuspendClientRequest(client_id=premium.client_id, reason="unpaid"),
            metadata=client.admin,
        )
        seen, token = [], ""
        while True:
            page = await k.clients.ListClients(
                accounts_pb2.ListClientsRequest(page_size=2, page_token=token),
                metadata=client.admin,
            )
            seen += [c.client_id for c in page.clients]
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == 3 and seen[0] == client.client_id  # oldest first

        premium_active = await k.clients.ListClients(
            accounts_pb2.ListClientsRequest(
                tier=common_pb2.TIER_PREMIUM, status=accounts_pb2.CLIENT_STATUS_ACTIVE
            ),
            metadata=client.admin,
        )
        assert len(premium_active.clients) == 1
        assert premium_active.clients[0].client_id not in (client.client_id, premium.client_id)
        suspended = await k.clients.ListClients(
            accounts_pb2.ListClientsRequest(status=accounts_pb2.CLIENT_STATUS_SUSPENDED),
            metadata=client.admin,
        )
        assert [c.client_id for c in suspended.clients] == [premium.client_id]
        error = await fails(
            k.clients.ListClients(accounts_pb2.ListClientsRequest(tier=42), metadata=client.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"tier"}


async def test_update_changes_only_the_masked_fields(client: Client) -> None:
    async with kam(client.mesh) as k:
        updated = await k.clients.UpdateClient(
            accounts_pb2.UpdateClientRequest(
                client=accounts_pb2.Client(
                    client_id=client.client_id,
                    company_name="Ignored Name",
                    tier=common_pb2.TIER_PREMIUM,
                    monthly_budget_usd=250.0,
                    industry="education",
                ),
                update_mask=field_mask_pb2.FieldMask(
                    paths=["tier", "monthly_budget_usd", "industry"]
                ),
            ),
            metadata=client.admin,
        )
        assert updated.client.company_name == "Acme Learning"
        assert updated.client.tier == common_pb2.TIER_PREMIUM
        assert updated.client.monthly_budget_usd == 250.0 and updated.client.industry == "education"
        got = await k.clients.GetClient(
            accounts_pb2.GetClientRequest(client_id=client.client_id), metadata=client.key
        )
        assert got.client == updated.client

        error = await fails(
            k.clients.UpdateClient(
                accounts_pb2.UpdateClientRequest(
                    client=accounts_pb2.Client(
                        client_id=client.client_id, contact_email="nope", monthly_budget_usd=-1
                    ),
                    update_mask=field_mask_pb2.FieldMask(
                        paths=["contact_email", "monthly_budget_usd", "create_time"]
                    ),
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {
            "update_mask",
            "client.contact_email",
            "client.monthly_budget_usd",
        }
        error = await fails(
            k.clients.CreateClient(accounts_pb2.CreateClientRequest(), metadata=client.admin),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {
            "client.company_name",
            "client.contact_email",
            "client.tier",
        }


async def test_a_suspended_client_cannot_create_or_execute_requests(client: Client) -> None:
    async with kam(client.mesh) as k:
        pending = await k.create_request(client.key)
        session = await client_user(k, client)
        suspended = await k.clients.SuspendClient(
            accounts_pb2.SuspendClientRequest(client_id=client.client_id, reason="fraud check"),
            metadata=client.admin,
        )
        assert suspended.client.status == accounts_pb2.CLIENT_STATUS_SUSPENDED
        for caller in (client.key, session):
            error = await fails(k.create_request(caller), grpc.StatusCode.FAILED_PRECONDITION)
            assert reason(error) == "CLIENT_SUSPENDED"
            error = await fails(
                k.execute(caller, pending.request_id), grpc.StatusCode.FAILED_PRECONDITION
            )
            assert reason(error) == "CLIENT_SUSPENDED"
        # Reading still works, and lifting the suspension restores work.
        await k.get_request(client.key, pending.request_id)
        await k.clients.UpdateClient(
            accounts_pb2.UpdateClientRequest(
                client=accounts_pb2.Client(
                    client_id=client.client_id, status=accounts_pb2.CLIENT_STATUS_ACTIVE
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=client.admin,
        )
        await k.create_request(client.key)
