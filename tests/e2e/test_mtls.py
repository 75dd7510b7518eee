"""The whole mesh over mutual TLS with a throwaway CA: every server and every channel between
them verifies its peer's certificate."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import auth_pb2, auth_pb2_grpc
from bitware.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from bitware_core.config import QueueSettings, Settings, TLSSettings
from bitware_mesh.inprocess import start_mesh
from tests.common import make_client, submit
from tests.tls_certs import Pki, make_pki


def _credentials(pki: Pki, with_client_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.key.read_bytes() if with_client_cert else None,
        certificate_chain=pki.cert.read_bytes() if with_client_cert else None,
    )


async def test_mesh_runs_end_to_end_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = Settings(
        tls=TLSSettings(cert=str(pki.cert), key=str(pki.key), ca=str(pki.ca)),
        queue=QueueSettings(heartbeat_interval=0.5),
    )
    mesh = await start_mesh(tmp_path / "data", settings)
    try:
        async with grpc.aio.secure_channel(mesh.kam.address, _credentials(pki)) as kam:
            client = await make_client(mesh, channel_credentials=_credentials(pki))
            _, execution_id = await submit(
                kam,
                client,
                common_pb2.ContentSpec(
                    topic="Secure Systems",
                    structure_type=common_pb2.STRUCTURE_TYPE_QUIZ,
                    granularity=2,
                ),
            )
        async with grpc.aio.secure_channel(mesh.orchestrator.address, _credentials(pki)) as orc:
            events = [
                m.event
                async for m in orchestrator_pb2_grpc.OrchestratorServiceStub(orc).WatchExecution(
                    orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id),
                    metadata=client.key,
                    timeout=30,
                )
            ]
        assert events[-1].type == orchestrator_pb2.EVENT_TYPE_EXECUTION_SUCCEEDED

        # A client without a certificate, or without TLS, is turned away.
        for channel in (
            grpc.aio.secure_channel(mesh.kam.address, _credentials(pki, with_client_cert=False)),
            grpc.aio.insecure_channel(mesh.kam.address),
        ):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await auth_pb2_grpc.AuthServiceStub(channel).Login(
                        auth_pb2.LoginRequest(email="x@y.z", password="p"), timeout=3
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await mesh.stop()
