"""The granulator's errors reach the caller with their fields as `ErrorInfo.metadata` (the
interceptor adds them; no call site builds metadata)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from granulator_server.domain import SEED_TEMPLATES
from granulator_server.service import template_to_proto
from tests.common import Client
from tests.kam.helpers import details


async def test_a_template_that_exists_is_named(client: Client) -> None:
    seed = next(t for t in SEED_TEMPLATES if t.name == "quiz_standard")
    async with grpc.aio.insecure_channel(client.mesh.granulators[0].address) as channel:
        granulator = granulator_pb2_grpc.GranulatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.CreateTemplate(
                granulator_pb2.CreateTemplateRequest(template=template_to_proto(seed)),
                metadata=client.admin,
                timeout=10,
            )
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    (info,) = details(raised.value, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("TEMPLATE_EXISTS", "granulator.bitware")
    assert dict(info.metadata) == {"template": "quiz_standard"}


async def test_a_missing_job_names_its_id(client: Client) -> None:
    async with grpc.aio.insecure_channel(client.mesh.granulators[0].address) as channel:
        granulator = granulator_pb2_grpc.GranulatorServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await granulator.GetJob(
                granulator_pb2.GetJobRequest(job_id="job_missing"),
                metadata=client.admin,
                timeout=10,
            )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    (info,) = details(raised.value, error_details_pb2.ErrorInfo)
    assert info.reason == "JOB_NOT_FOUND"
    assert dict(info.metadata) == {"job_id": "job_missing"}
