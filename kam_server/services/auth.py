"""AuthService: sign-in, sign-out, and credentials to principals for the other services."""

from __future__ import annotations

from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_core import convert
from bitware_core.auth import Credentials, current_principal
from bitware_core.errors import FailedPrecondition, PermissionDenied, Violations
from bitware_core.server import Context
from kam_server import identity
from kam_server.errors import BadCredential, LoginThrottled
from kam_server.services import Handlers


class AuthHandlers(Handlers, auth_pb2_grpc.AuthServiceServicer):
    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        peer = context.peer() or ""
        try:
            result = await self.db.run(
                lambda s: identity.login(s, request.email, request.password, peer)
            )
        except (BadCredential, LoginThrottled) as error:
            # Recorded in a transaction of its own: the failed one rolled back.
            throttled = isinstance(error, LoginThrottled)
            await self.db.run(
                lambda s: identity.record_login_failure(s, request.email, peer, throttled)
            )
            raise
        return auth_pb2.LoginResponse(
            session_token=result.token,
            expire_time=convert.timestamp(result.expires_at),
            principal=convert.principal_to_proto(result.principal),
        )

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: Context
    ) -> auth_pb2.LogoutResponse:
        token = Credentials.from_metadata(tuple(context.invocation_metadata() or ())).session_token
        if not token or current_principal().kind != "user":
            raise FailedPrecondition("sign out needs the session token you signed in with")
        await self.db.run(lambda s: identity.logout(s, token))
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: Context
    ) -> auth_pb2.AuthenticateResponse:
        caller = current_principal()
        which = request.WhichOneof("credential")
        if which is None:
            return auth_pb2.AuthenticateResponse(principal=convert.principal_to_proto(caller))
        if caller.kind not in ("service", "worker"):
            raise PermissionDenied(
                "only services and workers may check another caller's credential"
            )
        credentials = Credentials(
            api_key=request.api_key,
            session_token=request.session_token,
            worker_id=request.worker.worker_id,
            worker_token=request.worker.token,
        )
        problems = Violations()
        if which == "worker":
            problems.check(bool(request.worker.worker_id), "worker.worker_id", "is required")
            problems.check(bool(request.worker.token), "worker.token", "is required")
        else:
            problems.check(credentials.present, which, "must not be empty")
        problems.raise_if_any()
        principal = await identity.authenticate_cached(self.db, credentials)
        return auth_pb2.AuthenticateResponse(principal=convert.principal_to_proto(principal))
