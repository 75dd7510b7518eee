"""Users: admins create, list, update and delete them; the last active admin stays."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2
from tests.common import Client
from tests.kam.helpers import PASSWORD, fails, kam, reason, violated_fields


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_admin_creates_reads_lists_updates_and_deletes_users(client: Client) -> None:
    async with kam(client.mesh) as k:
        created = await k.create_user(
            client.admin, "Ann@Acme.test", common_pb2.ROLE_CLIENT, client.client_id
        )
        assert created.email == "ann@acme.test" and created.active
        assert created.client_id == client.client_id and created.user_id.startswith("usr_")
        got = await k.users.GetUser(
            accounts_pb2.GetUserRequest(user_id=created.user_id), metadata=client.admin
        )
        assert got.user == created

        updated = await k.users.UpdateUser(
            accounts_pb2.UpdateUserRequest(
                user=accounts_pb2.User(user_id=created.user_id, display_name="Ann A."),
                update_mask=mask("display_name"),
            ),
            metadata=client.admin,
        )
        assert updated.user.display_name == "Ann A." and updated.user.role == common_pb2.ROLE_CLIENT

        await k.users.DeleteUser(
            accounts_pb2.DeleteUserRequest(user_id=created.user_id), metadata=client.admin
        )
        await fails(
            k.users.GetUser(
                accounts_pb2.GetUserRequest(user_id=created.user_id), metadata=client.admin
            ),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_users_are_listed_by_email_in_pages(client: Client) -> None:
    async with kam(client.mesh) as k:
        for name in ("cat", "bob", "dan"):
            await k.create_user(client.admin, f"{name}@staff.test", common_pb2.ROLE_SUPPORT)
        emails, token = [], ""
        while True:
            page = await k.users.ListUsers(
                accounts_pb2.ListUsersRequest(page_size=2, page_token=token), metadata=client.admin
            )
            assert len(page.users) <= 2
            emails += [u.email for u in page.users]
            token = page.next_page_token
            if not token:
                break
        assert emails == sorted(emails)
        assert {"bob@staff.test", "cat@staff.test", "dan@staff.test"} <= set(emails)

        mine = await k.users.ListUsers(
            accounts_pb2.ListUsersRequest(client_id=client.client_id), metadata=client.admin
        )
        assert mine.users == []
        error = await fails(
            k.users.ListUsers(
                accounts_pb2.ListUsersRequest(page_token="garbage"), metadata=client.admin
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"page_token"}


async def test_bad_user_input_is_rejected_with_field_violations(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.users.CreateUser(
                accounts_pb2.CreateUserRequest(
                    user=accounts_pb2.User(email="not-an-email"), password="short"
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"user.email", "password", "user.role"}

        error = await fails(
            k.users.CreateUser(
                accounts_pb2.CreateUserRequest(
                    user=accounts_pb2.User(email="x@acme.test", role=common_pb2.ROLE_CLIENT),
                    password="eleven char",
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"password", "user.client_id"}

        await k.create_user(
            client.admin, "twelve@acme.test", common_pb2.ROLE_SUPPORT, password="x" * 12
        )
        await fails(
            k.create_user(client.admin, "TWELVE@acme.test", common_pb2.ROLE_SUPPORT),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        error = await fails(
            k.users.UpdateUser(
                accounts_pb2.UpdateUserRequest(
                    user=accounts_pb2.User(user_id="usr_x"), update_mask=mask("email")
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"update_mask"}


async def test_the_last_active_admin_cannot_be_deleted_demoted_or_deactivated(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        admin = (await k.whoami(client.admin)).user_id
        attempts = [
            k.users.DeleteUser(
                accounts_pb2.DeleteUserRequest(user_id=admin), metadata=client.admin
            ),
            k.users.UpdateUser(
                accounts_pb2.UpdateUserRequest(
                    user=accounts_pb2.User(user_id=admin, role=common_pb2.ROLE_SUPPORT),
                    update_mask=mask("role"),
                ),
                metadata=client.admin,
            ),
            k.users.UpdateUser(
                accounts_pb2.UpdateUserRequest(
                    user=accounts_pb2.User(user_id=admin, active=False), update_mask=mask("active")
                ),
                metadata=client.admin,
            ),
        ]
        for attempt in attempts:
            error = await fails(attempt, grpc.StatusCode.FAILED_PRECONDITION)
            assert reason(error) == "LAST_ADMIN"

        # With a second admin, the first may go.
        second = await k.create_user(client.admin, "second@bitware.test", common_pb2.ROLE_ADMIN)
        second_session = await k.login("second@bitware.test")
        await k.users.DeleteUser(
            accounts_pb2.DeleteUserRequest(user_id=admin), metadata=second_session
        )
        error = await fails(
            k.users.DeleteUser(
                accounts_pb2.DeleteUserRequest(user_id=second.user_id), metadata=second_session
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason(error) == "LAST_ADMIN"
        # The deleted admin's session died with it.
        await fails(
            k.users.ListUsers(accounts_pb2.ListUsersRequest(), metadata=client.admin),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_deactivating_a_user_or_changing_the_password_ends_their_sessions(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        user = await k.create_user(client.admin, "sam@staff.test", common_pb2.ROLE_SUPPORT)
        session = await k.login("sam@staff.test")
        me = accounts_pb2.GetUserRequest(user_id=user.user_id)
        assert (await k.users.GetUser(me, metadata=session)).user.email == "sam@staff.test"

        await k.users.UpdateUser(
            accounts_pb2.UpdateUserRequest(
                user=accounts_pb2.User(user_id=user.user_id),
                new_password="a brand new passphrase",
            ),
            metadata=client.admin,
        )
        await fails(k.users.GetUser(me, metadata=session), grpc.StatusCode.UNAUTHENTICATED)
        await fails(k.login("sam@staff.test", PASSWORD), grpc.StatusCode.UNAUTHENTICATED)
        session = await k.login("sam@staff.test", "a brand new passphrase")

        await k.users.UpdateUser(
            accounts_pb2.UpdateUserRequest(
                user=accounts_pb2.User(user_id=user.user_id, active=False),
                update_mask=mask("active"),
            ),
            metadata=client.admin,
        )
        await fails(k.users.GetUser(me, metadata=session), grpc.StatusCode.UNAUTHENTICATED)
        await fails(
            k.login("sam@staff.test", "a brand new passphrase"), grpc.StatusCode.UNAUTHENTICATED
        )


async def test_a_user_reads_itself_but_no_one_else(client: Client) -> None:
    async with kam(client.mesh) as k:
        sam = await k.create_user(
            client.admin, "sam@acme.test", common_pb2.ROLE_CLIENT, client.client_id
        )
        kim = await k.create_user(
            client.admin, "kim@acme.test", common_pb2.ROLE_CLIENT, client.client_id
        )
        session = await k.login("sam@acme.test")
        own = await k.users.GetUser(
            accounts_pb2.GetUserRequest(user_id=sam.user_id), metadata=session
        )
        assert own.user.user_id == sam.user_id
        await fails(
            k.users.GetUser(accounts_pb2.GetUserRequest(user_id=kim.user_id), metadata=session),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_client_users_are_limited_by_the_tier(client: Client) -> None:
    async with kam(client.mesh) as k:
        basic = await k.clients.CreateClient(
            accounts_pb2.CreateClientRequest(
                client=accounts_pb2.Client(
                    company_name="Tiny Co",
                    contact_email="ops@tiny.test",
                    tier=common_pb2.TIER_BASIC,
                    monthly_budget_usd=5,
                )
            ),
            metadata=client.admin,
        )
        basic_id = basic.client.client_id
        for index in range(2):  # basic allows 2 users per client
            await k.create_user(
                client.admin, f"u{index}@tiny.test", common_pb2.ROLE_CLIENT, basic_id
            )
        error = await fails(
            k.create_user(client.admin, "u3@tiny.test", common_pb2.ROLE_CLIENT, basic_id),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert reason(error) == "TIER_LIMIT_USERS"

        # Moving someone in counts too.
        outsider = await k.create_user(
            client.admin, "move@acme.test", common_pb2.ROLE_CLIENT, client.client_id
        )
        error = await fails(
            k.users.UpdateUser(
                accounts_pb2.UpdateUserRequest(
                    user=accounts_pb2.User(user_id=outsider.user_id, client_id=basic_id),
                    update_mask=mask("client_id"),
                ),
                metadata=client.admin,
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert reason(error) == "TIER_LIMIT_USERS"
