"""Every service's one channel to KAM, and the question it asks on every call: who is this?"""

from __future__ import annotations

import grpc

from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware_core import convert
from bitware_core.auth import Credentials, Principal
from bitware_core.channels import open_channel, service_metadata
from bitware_core.config import Settings
from bitware_core.context import timeout
from bitware_core.errors import Unauthenticated, Unavailable


class KamConnection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channel = open_channel(settings.peers.kam_address, settings)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)

    async def authenticate(self, credentials: Credentials) -> Principal:
        """Asks KAM who the credential belongs to (wrap in KamAuthenticator to cache)."""
        request = auth_pb2.AuthenticateRequest()
        if credentials.api_key:
            request.api_key = credentials.api_key
        elif credentials.session_token:
            request.session_token = credentials.session_token
        else:
            request.worker.worker_id = credentials.worker_id
            request.worker.token = credentials.worker_token
        try:
            response = await self.auth.Authenticate(
                request,
                timeout=timeout(self.settings.peers.rpc_timeout),
                metadata=service_metadata(self.settings),
                wait_for_ready=True,  # a peer still starting is waited for, within the deadline
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(error.details() or "unknown credential") from error
            raise Unavailable(f"KAM could not check the credential: {error.details()}") from error
        return convert.principal_from_proto(response.principal)

    async def close(self) -> None:
        await self.channel.close()
