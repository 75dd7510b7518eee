"""AuthService: sign-in, sign-out, and credentials to principals for the other services."""

from __future__ import annotations

from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_core import convert
from bitware_core.auth import Credentials, current_principal
from bitware_core.server import Context
from kam_server import identity
from kam_server.services import Handlers


class AuthHandlers(Handlers, auth_pb2_grpc.AuthServiceServicer):
    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        peer = context.peer() or ""
        result = await identity.sign_in(self.db, request.email, request.password, peer)
        return auth_pb2.LoginResponse(
            session_token=result.token,
            expire_time=convert.timestamp(result.expires_at),
            principal=convert.principal_to_proto(result.principal),
        )

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Context
    ) -> auth_pb2.LogoutResponse:
        principal = current_principal()
        token = Credentials.from_metadata(tuple(context.invocation_metadata() or ())).session_token
        await self.db.run(lambda s: identity.logout(s, principal, token))
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: Context
    ) -> auth_pb2.AuthenticateResponse:
        which = request.WhichOneof("credential")
        credentials = None
        if which is not None:
            credentials = Credentials(
                api_key=request.api_key,
                session_token=request.session_token,
                worker_id=request.worker.worker_id,
                worker_token=request.worker.token,
            )
        principal = await identity.check_credential(
            self.db, current_principal(), credentials, which or ""
        )
        return auth_pb2.AuthenticateResponse(principal=convert.principal_to_proto(principal))
