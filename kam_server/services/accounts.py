"""UserService, ClientService, ApiKeyService, WorkerCredentialService and AuditService."""

from __future__ import annotations

from dataclasses import replace

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import accounts_pb2, accounts_pb2_grpc
from bitware_core import convert
from bitware_core.auth import current_principal
from bitware_core.server import Context
from bitware_core.tiers import TIER_LIMITS
from kam_server import accounts, audit, credentials, ledger, messages
from kam_server.services import Handlers


class UserHandlers(Handlers, accounts_pb2_grpc.UserServiceServicer):
    @staticmethod
    def _fields(user: accounts_pb2.User) -> accounts.UserFields:
        return accounts.UserFields(
            email=user.email,
            display_name=user.display_name,
            role=messages.role(user.role, "user.role"),
            client_id=user.client_id,
            active=user.active,
        )

    async def CreateUser(
        self, request: accounts_pb2.CreateUserRequest, context: Context
    ) -> accounts_pb2.CreateUserResponse:
        actor = current_principal()
        # New users start active: a proto3 bool cannot tell "unset" from false.
        fields = replace(self._fields(request.user), active=True)
        row = await self.db.run(lambda s: accounts.create_user(s, actor, fields, request.password))
        return accounts_pb2.CreateUserResponse(user=messages.user_to_proto(row))

    async def GetUser(
        self, request: accounts_pb2.GetUserRequest, context: Context
    ) -> accounts_pb2.GetUserResponse:
        actor = current_principal()
        row = await self.db.run(lambda s: accounts.get_user(s, actor, request.user_id))
        return accounts_pb2.GetUserResponse(user=messages.user_to_proto(row))

    async def ListUsers(
        self, request: accounts_pb2.ListUsersRequest, context: Context
    ) -> accounts_pb2.ListUsersResponse:
        rows, token = await self.db.run(
            lambda s: accounts.list_users(
                s, request.page_size, request.page_token, request.client_id
            )
        )
        return accounts_pb2.ListUsersResponse(
            users=[messages.user_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateUser(
        self, request: accounts_pb2.UpdateUserRequest, context: Context
    ) -> accounts_pb2.UpdateUserResponse:
        actor = current_principal()
        fields = self._fields(request.user)
        mask = messages.mask_paths(request.update_mask)
        row = await self.db.run(
            lambda s: accounts.update_user(
                s, actor, request.user.user_id, fields, mask, request.new_password
            )
        )
        return accounts_pb2.UpdateUserResponse(user=messages.user_to_proto(row))

    async def DeleteUser(
        self, request: accounts_pb2.DeleteUserRequest, context: Context
    ) -> accounts_pb2.DeleteUserResponse:
        actor = current_principal()
        await self.db.run(lambda s: accounts.delete_user(s, actor, request.user_id))
        return accounts_pb2.DeleteUserResponse()


class ClientHandlers(Handlers, accounts_pb2_grpc.ClientServiceServicer):
    @staticmethod
    def _fields(client: accounts_pb2.Client) -> accounts.ClientFields:
        return accounts.ClientFields(
            company_name=client.company_name,
            contact_email=client.contact_email,
            tier=messages.tier(client.tier, "client.tier"),
            monthly_budget_usd=client.monthly_budget_usd,
            status=messages.client_status(client.status, "client.status"),
            industry=client.industry,
            company_size=client.company_size,
        )

    async def CreateClient(
        self, request: accounts_pb2.CreateClientRequest, context: Context
    ) -> accounts_pb2.CreateClientResponse:
        actor = current_principal()
        fields = self._fields(request.client)
        row = await self.db.run(lambda s: accounts.create_client(s, actor, fields))
        return accounts_pb2.CreateClientResponse(client=messages.client_to_proto(row))

    async def GetClient(
        self, request: accounts_pb2.GetClientRequest, context: Context
    ) -> accounts_pb2.GetClientResponse:
        actor = current_principal()
        row = await self.db.run(lambda s: accounts.get_client(s, actor, request.client_id))
        return accounts_pb2.GetClientResponse(client=messages.client_to_proto(row))

    async def ListClients(
        self, request: accounts_pb2.ListClientsRequest, context: Context
    ) -> accounts_pb2.ListClientsResponse:
        status = messages.client_status(request.status, "status")
        tier = messages.tier(request.tier, "tier")
        rows, token = await self.db.run(
            lambda s: accounts.list_clients(s, request.page_size, request.page_token, status, tier)
        )
        return accounts_pb2.ListClientsResponse(
            clients=[messages.client_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateClient(
        self, request: accounts_pb2.UpdateClientRequest, context: Context
    ) -> accounts_pb2.UpdateClientResponse:
        actor = current_principal()
        fields = self._fields(request.client)
        mask = messages.mask_paths(request.update_mask)
        row = await self.db.run(
            lambda s: accounts.update_client(s, actor, request.client.client_id, fields, mask)
        )
        return accounts_pb2.UpdateClientResponse(client=messages.client_to_proto(row))

    async def SuspendClient(
        self, request: accounts_pb2.SuspendClientRequest, context: Context
    ) -> accounts_pb2.SuspendClientResponse:
        actor = current_principal()
        row = await self.db.run(
            lambda s: accounts.suspend_client(s, actor, request.client_id, request.reason)
        )
        return accounts_pb2.SuspendClientResponse(client=messages.client_to_proto(row))

    async def GetUsage(
        self, request: accounts_pb2.GetUsageRequest, context: Context
    ) -> accounts_pb2.GetUsageResponse:
        actor = current_principal()
        usage = await self.db.run(lambda s: ledger.usage_of(s, actor, request.client_id))
        return messages.usage_to_proto(usage)

    async def ListTiers(
        self, request: accounts_pb2.ListTiersRequest, context: Context
    ) -> accounts_pb2.ListTiersResponse:
        return accounts_pb2.ListTiersResponse(
            tiers=[
                accounts_pb2.TierLimits(
                    tier=convert.enum_value(common_pb2.Tier, name, "TIER_"),
                    max_users=limits.max_users,
                    max_requests_per_month=limits.max_requests_per_month,
                    max_concurrent_executions=limits.max_concurrent_executions,
                    max_priority=convert.enum_value(
                        common_pb2.Priority, limits.max_priority, "PRIORITY_"
                    ),
                    requests_per_second=limits.requests_per_second,
                    request_burst=limits.request_burst,
                )
                for name, limits in TIER_LIMITS.items()
            ]
        )


class ApiKeyHandlers(Handlers, accounts_pb2_grpc.ApiKeyServiceServicer):
    async def CreateApiKey(
        self, request: accounts_pb2.CreateApiKeyRequest, context: Context
    ) -> accounts_pb2.CreateApiKeyResponse:
        actor = current_principal()
        expires_at = request.expire_time.ToDatetime() if request.HasField("expire_time") else None
        key, plaintext = await self.db.run(
            lambda s: credentials.create_api_key(
                s, actor, request.client_id, request.name, list(request.scopes), expires_at
            )
        )
        return accounts_pb2.CreateApiKeyResponse(
            api_key=messages.api_key_to_proto(key), key=plaintext
        )

    async def ListApiKeys(
        self, request: accounts_pb2.ListApiKeysRequest, context: Context
    ) -> accounts_pb2.ListApiKeysResponse:
        actor = current_principal()
        rows, token = await self.db.run(
            lambda s: credentials.list_api_keys(
                s, actor, request.client_id, request.page_size, request.page_token
            )
        )
        return accounts_pb2.ListApiKeysResponse(
            api_keys=[messages.api_key_to_proto(r) for r in rows], next_page_token=token
        )

    async def RevokeApiKey(
        self, request: accounts_pb2.RevokeApiKeyRequest, context: Context
    ) -> accounts_pb2.RevokeApiKeyResponse:
        actor = current_principal()
        key = await self.db.run(lambda s: credentials.revoke_api_key(s, actor, request.api_key_id))
        return accounts_pb2.RevokeApiKeyResponse(api_key=messages.api_key_to_proto(key))


class WorkerCredentialHandlers(Handlers, accounts_pb2_grpc.WorkerCredentialServiceServicer):
    async def CreateWorkerCredential(
        self, request: accounts_pb2.CreateWorkerCredentialRequest, context: Context
    ) -> accounts_pb2.CreateWorkerCredentialResponse:
        actor = current_principal()
        kind = (
            convert.checked_enum(common_pb2.PrincipalKind, request.kind, "PRINCIPAL_KIND_", "kind")
            or "worker"
        )
        cred, token = await self.db.run(
            lambda s: credentials.create_worker_credential(s, actor, request.worker_id, kind)
        )
        return accounts_pb2.CreateWorkerCredentialResponse(
            credential=messages.credential_to_proto(cred), token=token
        )

    async def RotateWorkerCredential(
        self, request: accounts_pb2.RotateWorkerCredentialRequest, context: Context
    ) -> accounts_pb2.RotateWorkerCredentialResponse:
        actor = current_principal()
        cred, token = await self.db.run(
            lambda s: credentials.rotate_worker_credential(s, actor, request.worker_id)
        )
        return accounts_pb2.RotateWorkerCredentialResponse(
            credential=messages.credential_to_proto(cred), token=token
        )

    async def ListWorkerCredentials(
        self, request: accounts_pb2.ListWorkerCredentialsRequest, context: Context
    ) -> accounts_pb2.ListWorkerCredentialsResponse:
        rows, token = await self.db.run(
            lambda s: credentials.list_worker_credentials(s, request.page_size, request.page_token)
        )
        return accounts_pb2.ListWorkerCredentialsResponse(
            credentials=[messages.credential_to_proto(r) for r in rows], next_page_token=token
        )

    async def RevokeWorkerCredential(
        self, request: accounts_pb2.RevokeWorkerCredentialRequest, context: Context
    ) -> accounts_pb2.RevokeWorkerCredentialResponse:
        actor = current_principal()
        cred = await self.db.run(
            lambda s: credentials.revoke_worker_credential(s, actor, request.worker_id)
        )
        return accounts_pb2.RevokeWorkerCredentialResponse(
            credential=messages.credential_to_proto(cred)
        )


class AuditHandlers(Handlers, accounts_pb2_grpc.AuditServiceServicer):
    async def ListAuditEvents(
        self, request: accounts_pb2.ListAuditEventsRequest, context: Context
    ) -> accounts_pb2.ListAuditEventsResponse:
        rows, token = await self.db.run(
            lambda s: audit.list_events(
                s, request.page_size, request.page_token, request.action_prefix
            )
        )
        return accounts_pb2.ListAuditEventsResponse(
            events=[messages.audit_to_proto(r) for r in rows], next_page_token=token
        )
