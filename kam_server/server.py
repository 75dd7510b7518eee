"""Builds, starts and stops the KAM server."""

from __future__ import annotations

from pathlib import Path

from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from bitware_core.auth import (
    ADMIN,
    ANYONE,
    CLIENT,
    PUBLIC,
    READERS,
    SERVICE,
    STAFF,
    Credentials,
    Principal,
)
from bitware_core.config import Settings, SettingsError
from bitware_core.db import Database
from bitware_core.server import MeshServer, Service, run_process
from kam_server import catalog, identity, models, webhooks
from kam_server.delivery import Deliverer
from kam_server.orchestrator_client import OrchestratorClient
from kam_server.services.accounts import (
    ApiKeyHandlers,
    AuditHandlers,
    ClientHandlers,
    UserHandlers,
    WorkerCredentialHandlers,
)
from kam_server.services.auth import AuthHandlers
from kam_server.services.requests import RequestHandlers
from kam_server.services.templates import TemplateHandlers
from kam_server.services.webhooks import WebhookHandlers

# Who may call what (caller tags from bitware_core.auth). Finer rules live in the logic: a
# client principal only ever sees its own client; API keys cannot manage API keys; a user may
# read itself. tests/kam/test_authorization.py holds the full matrix.
ADMINS = frozenset({ADMIN})
#: A client acting on its own account, or an admin acting for one.
CLIENT_OR_ADMIN = frozenset({ADMIN, CLIENT})


class _LocalAuthenticator:
    """KAM checks credentials against its own database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def authenticate(self, credentials: Credentials) -> Principal:
        return await identity.authenticate_cached(self.db, credentials)


class KamServer(MeshServer):
    def __init__(self, settings: Settings) -> None:
        self.db = Database(settings.storage.database_url_for("kam"))
        self.orchestrator = OrchestratorClient(settings)
        if settings.peers.orchestrator_address:
            self.orchestrator.connect(settings.peers.orchestrator_address)
        db = self.db
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = Path(settings.webhooks.key_file or settings.storage.data_dir / "webhook.key")
        try:  # a wrong key file stops the server in one line, like any other bad setting
            key = webhooks.WebhookKey.load(key_file)
        except ValueError as error:
            raise SettingsError(f"BITWARE_WEBHOOK_KEY_FILE: {error}") from None
        except OSError as error:
            raise SettingsError(
                f"BITWARE_WEBHOOK_KEY_FILE={key_file}: cannot read or create it: {error.strerror}"
            ) from None
        self.deliverer = Deliverer(db, key, settings.webhooks.retry_base)

        def svc(
            module: object, name: str, handlers: object, access: dict[str, frozenset[str]]
        ) -> Service:
            add = getattr(module, f"add_{name}Servicer_to_server")
            pb2 = {
                auth_pb2_grpc: auth_pb2,
                accounts_pb2_grpc: accounts_pb2,
                templates_pb2_grpc: templates_pb2,
                requests_pb2_grpc: requests_pb2,
                webhooks_pb2_grpc: webhooks_pb2,
            }[module]  # type: ignore[index]
            return Service(
                pb2.DESCRIPTOR.services_by_name[name], lambda server: add(handlers, server), access
            )

        services = [
            svc(
                auth_pb2_grpc,
                "AuthService",
                AuthHandlers(db),
                {
                    "Login": PUBLIC,
                    "Logout": READERS,
                    "Authenticate": ANYONE,
                },
            ),
            svc(
                accounts_pb2_grpc,
                "UserService",
                UserHandlers(db),
                {
                    "CreateUser": ADMINS,
                    "GetUser": READERS,
                    "ListUsers": STAFF,
                    "UpdateUser": ADMINS,
                    "DeleteUser": ADMINS,
                },
            ),
            svc(
                accounts_pb2_grpc,
                "ClientService",
                ClientHandlers(db),
                {
                    "CreateClient": ADMINS,
                    "GetClient": READERS,
                    "ListClients": STAFF,
                    "UpdateClient": ADMINS,
                    "SuspendClient": ADMINS,
                    "GetUsage": READERS,
                    "ListTiers": ANYONE,
                },
            ),
            svc(
                accounts_pb2_grpc,
                "ApiKeyService",
                ApiKeyHandlers(db),
                {
                    "CreateApiKey": CLIENT_OR_ADMIN,
                    "ListApiKeys": READERS,
                    "RevokeApiKey": CLIENT_OR_ADMIN,
                },
            ),
            svc(
                accounts_pb2_grpc,
                "WorkerCredentialService",
                WorkerCredentialHandlers(db),
                {
                    "CreateWorkerCredential": ADMINS,
                    "RotateWorkerCredential": ADMINS,
                    "ListWorkerCredentials": STAFF,
                    "RevokeWorkerCredential": ADMINS,
                },
            ),
            svc(
                accounts_pb2_grpc,
                "AuditService",
                AuditHandlers(db),
                {
                    "ListAuditEvents": STAFF,
                },
            ),
            svc(
                templates_pb2_grpc,
                "TemplateService",
                TemplateHandlers(db, settings.kam.extra_capability_set),
                {
                    "CreateMasterTemplate": ADMINS,
                    "GetMasterTemplate": ANYONE,
                    "ListMasterTemplates": ANYONE,
                    "DeprecateMasterTemplate": ADMINS,
                },
            ),
            svc(
                requests_pb2_grpc,
                "RequestService",
                RequestHandlers(db, self.orchestrator),
                {
                    "CreateRequest": CLIENT_OR_ADMIN,
                    "GetRequest": READERS,
                    "ListRequests": READERS,
                    "ExecuteRequest": CLIENT_OR_ADMIN,
                    "RetryRequest": CLIENT_OR_ADMIN,
                    "CancelRequest": CLIENT_OR_ADMIN,
                    "RecordExecutionOutcome": frozenset({SERVICE}),
                },
            ),
            svc(
                webhooks_pb2_grpc,
                "WebhookService",
                WebhookHandlers(db, key, settings.webhooks.allow_insecure),
                {
                    "CreateWebhookEndpoint": CLIENT_OR_ADMIN,
                    "ListWebhookEndpoints": READERS,
                    "DeleteWebhookEndpoint": CLIENT_OR_ADMIN,
                    "ListWebhookDeliveries": READERS,
                },
            ),
        ]
        super().__init__(settings, services, _LocalAuthenticator(db), "kam.bitware")

    async def start(self) -> int:
        settings = self.settings

        def prepare(session: object) -> None:
            from sqlalchemy.orm import Session

            assert isinstance(session, Session)
            catalog.seed(session)
            identity.bootstrap(
                session,
                settings.kam.bootstrap_admin_email,
                settings.kam.bootstrap_admin_password,
                settings.kam.bootstrap_credentials,
            )

        with self.db.exclusive("kam start-up"):
            self.db.migrate(
                "kam", str(Path(__file__).parent / "migrations"), models.KamBase.metadata
            )
            await self.db.run(prepare)
        port = await super().start()
        self.deliverer.start()
        return port

    def reconfigure(self, name: str, value: str) -> bool:
        # `bitware up` starts KAM first and tells it the orchestrator's address once bound.
        if name != "BITWARE_ORCHESTRATOR_ADDRESS":
            return False
        self.orchestrator.connect(value)
        return True

    async def stop(self, grace: float | None = None) -> None:
        await self.deliverer.stop()
        await super().stop(grace)
        await self.orchestrator.close()
        self.db.close()


async def serve(settings: Settings) -> KamServer:
    """Starts KAM on settings.server's host:port (0 = any free port); returns the started
    server."""
    server = KamServer(settings)
    await server.start()
    return server


def main() -> None:
    run_process("kam", KamServer)
