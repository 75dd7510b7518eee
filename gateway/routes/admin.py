"""Clients, their API keys, and users (KAM). Who may call each is KAM's decision: an API key on
these routes is answered 403 by KAM, not by the gateway."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2
from gateway.calls import CallDep, enum_value, reply
from gateway.models import ClientStatus, CreateApiKeyBody, CreateClientBody, CreateUserBody, Int32
from gateway.models import Tier as TierName
from gateway.schemas import returns

router = APIRouter(prefix="/api", tags=["admin"])

PageSize = Annotated[Int32, Query(description="At most this many (default 50).")]
PageToken = Annotated[str, Query(description="The previous page's next_page_token.")]


@router.get("/clients", responses=returns(accounts_pb2.ListClientsResponse, "A page"))
async def list_clients(
    call: CallDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    status: ClientStatus | None = None,
    tier: TierName | None = None,
) -> JSONResponse:
    """Lists clients, oldest first (admins and support)."""
    message = accounts_pb2.ListClientsRequest(
        page_size=page_size,
        page_token=page_token,
        status=enum_value(accounts_pb2.ClientStatus, "CLIENT_STATUS_", status),
        tier=enum_value(common_pb2.Tier, "TIER_", tier),
    )
    return reply(await call(call.up.clients.ListClients, message))


@router.post("/clients", responses=returns(accounts_pb2.CreateClientResponse, "The client"))
async def create_client(body: CreateClientBody, call: CallDep) -> JSONResponse:
    """Creates a client (admins)."""
    client = accounts_pb2.Client(
        company_name=body.company_name,
        contact_email=body.contact_email,
        tier=enum_value(common_pb2.Tier, "TIER_", body.tier),
        monthly_budget_usd=body.monthly_budget_usd,
        industry=body.industry,
        company_size=body.company_size,
    )
    message = accounts_pb2.CreateClientRequest(client=client)
    return reply(await call(call.up.clients.CreateClient, message))


@router.get("/clients/{client_id}", responses=returns(accounts_pb2.GetClientResponse, "Client"))
async def get_client(client_id: str, call: CallDep) -> JSONResponse:
    """Returns a client; a client principal sees only its own."""
    message = accounts_pb2.GetClientRequest(client_id=client_id)
    return reply(await call(call.up.clients.GetClient, message))


@router.post(
    "/clients/{client_id}/api-keys",
    responses=returns(accounts_pb2.CreateApiKeyResponse, "The key; its secret is shown only now"),
)
async def create_api_key(
    client_id: str, call: CallDep, body: CreateApiKeyBody | None = None
) -> JSONResponse:
    """Creates an API key for a client, optionally limited in scope and time."""
    message = accounts_pb2.CreateApiKeyRequest(client_id=client_id)
    if body is not None:
        message.name = body.name
        message.scopes.extend(body.scopes)
        if body.expire_time is not None:
            message.expire_time.FromDatetime(body.expire_time)
    return reply(await call(call.up.api_keys.CreateApiKey, message))


@router.get(
    "/clients/{client_id}/api-keys",
    responses=returns(accounts_pb2.ListApiKeysResponse, "The keys, never their secrets"),
)
async def list_api_keys(
    client_id: str, call: CallDep, page_size: PageSize = 0, page_token: PageToken = ""
) -> JSONResponse:
    """Lists a client's API keys, newest first."""
    message = accounts_pb2.ListApiKeysRequest(
        client_id=client_id, page_size=page_size, page_token=page_token
    )
    return reply(await call(call.up.api_keys.ListApiKeys, message))


@router.delete(
    "/api-keys/{api_key_id}", responses=returns(accounts_pb2.RevokeApiKeyResponse, "Revoked")
)
async def revoke_api_key(api_key_id: str, call: CallDep) -> JSONResponse:
    """Revokes an API key; it stops working within the services' auth cache time."""
    message = accounts_pb2.RevokeApiKeyRequest(api_key_id=api_key_id)
    return reply(await call(call.up.api_keys.RevokeApiKey, message))


@router.get("/users", responses=returns(accounts_pb2.ListUsersResponse, "Users by email"))
async def list_users(
    call: CallDep,
    page_size: PageSize = 0,
    page_token: PageToken = "",
    client_id: Annotated[str, Query(description="Only users of this client.")] = "",
) -> JSONResponse:
    """Lists users (admins and support)."""
    message = accounts_pb2.ListUsersRequest(
        page_size=page_size, page_token=page_token, client_id=client_id
    )
    return reply(await call(call.up.users.ListUsers, message))


@router.post("/users", responses=returns(accounts_pb2.CreateUserResponse, "The user"))
async def create_user(body: CreateUserBody, call: CallDep) -> JSONResponse:
    """Creates a user (admins)."""
    user = accounts_pb2.User(
        email=body.email,
        display_name=body.display_name,
        role=enum_value(common_pb2.Role, "ROLE_", body.role),
        client_id=body.client_id,
        active=True,
    )
    message = accounts_pb2.CreateUserRequest(user=user, password=body.password)
    return reply(await call(call.up.users.CreateUser, message))
