"""`AsyncClient`: the mesh's gRPC API for asyncio programs.

One long-lived channel per server. KAM (the address every client has) takes requests, keys and
templates; the orchestrator streams progress and lists executions; a granulator holds the
structures it produced. Every call has a deadline, a call that fails UNAVAILABLE is retried with
backoff (`Retry`), and any other failure raises the typed error of `bitware_client.errors`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from bitware.common.v1 import common_pb2
from bitware.granulator.v1 import granulator_pb2, granulator_pb2_grpc
from bitware.kam.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    requests_pb2,
    requests_pb2_grpc,
    templates_pb2,
    templates_pb2_grpc,
)
from bitware.orchestrator.v1 import (
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from bitware_client.errors import BitwareError, Unavailable, from_rpc_error
from bitware_client.events import ProgressEvent, RunResult
from bitware_client.options import TLS, Retry

Request = TypeVar("Request")
Response = TypeVar("Response")
Item = TypeVar("Item")

#: Structure types by their short name, as `run(type=…)` takes them.
STRUCTURE_TYPES = tuple(
    name.removeprefix("STRUCTURE_TYPE_").lower()
    for name in common_pb2.StructureType.DESCRIPTOR.values_by_name
    if name != "STRUCTURE_TYPE_UNSPECIFIED"
)
URGENCIES = ("low", "normal", "high", "critical")


def _enum(enum: Any, prefix: str, short: str | None) -> Any:
    """`course` → STRUCTURE_TYPE_COURSE (None → unspecified), with a clear error for a name the
    proto lacks."""
    if not short:
        return 0
    try:
        return enum.Value(f"{prefix}{short.upper()}")
    except ValueError:
        raise ValueError(f"unknown {prefix.lower().rstrip('_')}: {short!r}") from None


class AsyncClient:
    """A client of one mesh.

    `address` is KAM's host:port. `orchestrator` is needed by `watch`, `run` and `executions`;
    `granulator` by `structure` and `run`: one address, or worker id → address when there are
    several granulators that each keep their own store (as under `bitware up`). The credential is
    a client's `api_key`, or a `session_token` (see `login`). `tls=True` verifies the servers
    against the system's roots; a `TLS` gives a CA and, for mutual TLS, a client certificate.
    `timeout` is the deadline of each unary call, in seconds.
    """

    def __init__(
        self,
        address: str,
        *,
        orchestrator: str | None = None,
        granulator: str | Mapping[str, str] | None = None,
        api_key: str | None = None,
        session_token: str | None = None,
        tls: bool | TLS = False,
        timeout: float = 10.0,
        retry: Retry | None = None,
    ) -> None:
        credentials = None
        if tls:
            credentials = (tls if isinstance(tls, TLS) else TLS()).credentials()

        def channel(target: str) -> grpc.aio.Channel:
            if credentials is None:
                return grpc.aio.insecure_channel(target)
            return grpc.aio.secure_channel(target, credentials)

        self.timeout = timeout
        self.retry = retry or Retry()
        self._api_key = api_key or ""
        self._session = session_token or ""
        self._kam = channel(address)
        self._orchestrator = channel(orchestrator) if orchestrator else None
        targets = {"": granulator} if isinstance(granulator, str) else dict(granulator or {})
        self._granulators = {worker: channel(target) for worker, target in targets.items()}
        self.requests = Requests(self)
        self.executions = Executions(self)
        self.keys = ApiKeys(self)
        self.templates = Templates(self)

    # ------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        channels = [self._kam, self._orchestrator, *self._granulators.values()]
        for channel in channels:
            if channel is not None:
                await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ credentials

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credential as gRPC metadata (a session wins over an API key)."""
        if self._session:
            return (("x-bitware-session-token", self._session),)
        return (("x-api-key", self._api_key),) if self._api_key else ()

    async def login(self, email: str, password: str) -> None:
        """Opens a user session (an admin's, for staff-only calls); it replaces the API key."""
        answer = await self.call(
            auth_pb2_grpc.AuthServiceStub(self._kam).Login,
            auth_pb2.LoginRequest(email=email, password=password),
        )
        self._session = answer.session_token

    async def logout(self) -> None:
        """Closes the session opened by `login`."""
        if self._session:
            await self.call(
                auth_pb2_grpc.AuthServiceStub(self._kam).Logout, auth_pb2.LogoutRequest()
            )
            self._session = ""

    # ------------------------------------------------------------ calls

    async def call(
        self,
        method: Callable[..., Awaitable[Response]],
        request: Any,
        timeout: float | None = None,
    ) -> Response:
        """One unary call with the credential and a deadline, retried while UNAVAILABLE."""
        delays = self.retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                return await method(
                    request, metadata=self.metadata, timeout=timeout or self.timeout
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == len(delays):
                    raise from_rpc_error(error) from None
            await asyncio.sleep(delays[attempt])
        raise AssertionError("unreachable")

    async def pages(
        self, fetch: Callable[[str], Awaitable[tuple[list[Item], str]]], limit: int
    ) -> list[Item]:
        """Up to `limit` items, following page tokens."""
        items: list[Item] = []
        token = ""
        while len(items) < limit:
            page, token = await fetch(token)
            items += page
            if not token:
                break
        return items[:limit]

    def orchestrator(self) -> grpc.aio.Channel:
        if self._orchestrator is None:
            raise ValueError("this needs the orchestrator's address: AsyncClient(orchestrator=…)")
        return self._orchestrator

    def granulator(self, worker_id: str = "") -> grpc.aio.Channel:
        if not self._granulators:
            raise ValueError("this needs a granulator's address: AsyncClient(granulator=…)")
        return self._granulators.get(worker_id) or next(iter(self._granulators.values()))

    # ------------------------------------------------------------ the mesh

    async def queue(self) -> orchestrator_pb2.GetQueueResponse:
        """Queue depth per priority, the oldest wait, and what runs."""
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.orchestrator())
        return await self.call(stub.GetQueue, orchestrator_pb2.GetQueueRequest())

    async def workers(self, limit: int = 1000) -> list[registry_pb2.Worker]:
        """The registered workers (staff only)."""
        stub = registry_pb2_grpc.WorkerRegistryServiceStub(self.orchestrator())

        async def fetch(token: str) -> tuple[list[registry_pb2.Worker], str]:
            page = await self.call(
                stub.ListWorkers, registry_pb2.ListWorkersRequest(page_size=200, page_token=token)
            )
            return list(page.workers), page.next_page_token

        return await self.pages(fetch, limit)

    async def structure(
        self, job_id: str, *, worker_id: str = ""
    ) -> granulator_pb2.GetStructureResponse:
        """The structure a job produced, from the granulator that ran it (`worker_id`)."""
        stub = granulator_pb2_grpc.GranulatorServiceStub(self.granulator(worker_id))
        return await self.call(stub.GetStructure, granulator_pb2.GetStructureRequest(job_id=job_id))

    async def watch(
        self, execution_id: str, *, after_sequence: int = 0, timeout: float = 3600.0
    ) -> AsyncIterator[ProgressEvent]:
        """The execution's events in order, from `after_sequence` on: its history first, then
        live, ending with the terminal event. A stream that breaks is reopened after the last
        event received, so none is lost or repeated; `timeout` bounds the whole watch. The
        stream is asked for batches (several events a message); they are still yielded one by
        one."""
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.orchestrator())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = after_sequence
        delays = iter(self.retry.delays())
        while True:
            stream = stub.WatchExecution(
                orchestrator_pb2.WatchExecutionRequest(
                    execution_id=execution_id, after_sequence=last, batched=True
                ),
                metadata=self.metadata,
                timeout=max(0.0, deadline - loop.time()),
            )
            broken: BitwareError | None = None
            try:
                async for message in stream:
                    # An orchestrator that predates batches sends one `event` a message.
                    for raw in message.events or [message.event]:
                        event = ProgressEvent.from_proto(raw)
                        if event.sequence <= last:
                            continue
                        last = event.sequence
                        delays = iter(self.retry.delays())  # progress: the retries start afresh
                        yield event
                        if event.terminal:
                            return
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise from_rpc_error(error) from None
                broken = from_rpc_error(error)
            finally:
                stream.cancel()
            delay = next(delays, None)
            if delay is None:
                raise broken or Unavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the watch of {execution_id} kept ending before the execution did",
                )
            await asyncio.sleep(delay)

    async def run(
        self,
        topic: str,
        *,
        type: str = "course",
        audience: str = "",
        granularity: int = 0,
        template: str = "",
        urgency: str | None = None,
        client_id: str = "",
        timeout: float = 600.0,
        on_event: Callable[[ProgressEvent], None] | None = None,
    ) -> RunResult:
        """Creates a request, executes it, watches it to the end (`on_event` sees each event)
        and returns the request, the execution and, when it succeeded, the structure."""
        created = await self.requests.create(
            topic,
            type=type,
            audience=audience,
            granularity=granularity,
            template=template,
            urgency=urgency,
            client_id=client_id,
        )
        execution_id = await self.requests.execute(created.request_id)
        async for event in self.watch(execution_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        execution = await self.executions.get(execution_id)
        request = await self.requests.get(created.request_id)
        structure = None
        if execution.status == orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED:
            structure = await self.structure(execution.job_id, worker_id=producer(execution))
        return RunResult(request, execution, structure)


def producer(execution: orchestrator_pb2.Execution) -> str:
    """The worker whose attempt produced the deliverable job (it holds the stored tree)."""
    for stage in reversed(execution.stages):
        if stage.job_id == execution.job_id:
            for attempt in reversed(stage.attempts):
                if attempt.status == orchestrator_pb2.ATTEMPT_STATUS_SUCCEEDED:
                    return attempt.worker_id
    return ""


class Requests:
    """A client's requests, at KAM (`client.requests`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = requests_pb2_grpc.RequestServiceStub(client._kam)

    async def create(
        self,
        topic: str,
        *,
        type: str = "course",
        audience: str = "",
        granularity: int = 0,
        template: str = "",
        urgency: str | None = None,
        client_id: str = "",
        idempotency_key: str | None = None,
    ) -> requests_pb2.ClientRequest:
        """Creates a request. Without an `idempotency_key` one is made up, so that a retry
        after UNAVAILABLE cannot create the request twice."""
        spec = common_pb2.ContentSpec(
            topic=topic,
            structure_type=_enum(common_pb2.StructureType, "STRUCTURE_TYPE_", type),
            audience=audience,
            granularity=granularity,
        )
        request = requests_pb2.CreateRequestRequest(
            spec=spec,
            master_template=template,
            urgency=_enum(requests_pb2.Urgency, "URGENCY_", urgency),
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            client_id=client_id,
        )
        return (await self._client.call(self._stub.CreateRequest, request)).request

    async def execute(self, request_id: str) -> str:
        """Executes a request; returns the execution's id (executing twice returns the same)."""
        answer = await self._client.call(
            self._stub.ExecuteRequest, requests_pb2.ExecuteRequestRequest(request_id=request_id)
        )
        return answer.execution_id

    async def get(self, request_id: str) -> requests_pb2.ClientRequest:
        answer = await self._client.call(
            self._stub.GetRequest, requests_pb2.GetRequestRequest(request_id=request_id)
        )
        return answer.request

    async def list(
        self, *, status: str | None = None, client_id: str = "", limit: int = 50
    ) -> list[requests_pb2.ClientRequest]:
        """The newest `limit` requests, of one `status` (`pending`, `running`, `completed`,
        `failed`, `cancelled`) when given."""
        wanted = _enum(requests_pb2.RequestStatus, "REQUEST_STATUS_", status)

        async def fetch(token: str) -> tuple[list[requests_pb2.ClientRequest], str]:
            page = await self._client.call(
                self._stub.ListRequests,
                requests_pb2.ListRequestsRequest(
                    page_size=min(limit, 200), page_token=token, status=wanted, client_id=client_id
                ),
            )
            return list(page.requests), page.next_page_token

        return await self._client.pages(fetch, limit)

    async def cancel(self, request_id: str) -> requests_pb2.ClientRequest:
        answer = await self._client.call(
            self._stub.CancelRequest, requests_pb2.CancelRequestRequest(request_id=request_id)
        )
        return answer.request

    async def retry(self, request_id: str) -> str:
        """Re-runs a failed request from its failed stage; returns the execution's id."""
        answer = await self._client.call(
            self._stub.RetryRequest, requests_pb2.RetryRequestRequest(request_id=request_id)
        )
        return answer.execution_id


class Executions:
    """Executions, at the orchestrator (`client.executions`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def _stub(self) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        return orchestrator_pb2_grpc.OrchestratorServiceStub(self._client.orchestrator())

    async def get(self, execution_id: str) -> orchestrator_pb2.Execution:
        answer = await self._client.call(
            self._stub().GetExecution,
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
        )
        return answer.execution

    async def list(
        self, *, status: str | None = None, client_id: str = "", limit: int = 50
    ) -> list[orchestrator_pb2.Execution]:
        """The newest `limit` executions (without stage outputs), of one `status` (`queued`,
        `running`, `succeeded`, `failed`, `cancelled`) when given."""
        stub = self._stub()
        wanted = _enum(orchestrator_pb2.ExecutionStatus, "EXECUTION_STATUS_", status)

        async def fetch(token: str) -> tuple[list[orchestrator_pb2.Execution], str]:
            page = await self._client.call(
                stub.ListExecutions,
                orchestrator_pb2.ListExecutionsRequest(
                    page_size=min(limit, 200), page_token=token, status=wanted, client_id=client_id
                ),
            )
            return list(page.executions), page.next_page_token

        return await self._client.pages(fetch, limit)


class ApiKeys:
    """A client's API keys, at KAM (`client.keys`; admins, or the client itself)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = accounts_pb2_grpc.ApiKeyServiceStub(client._kam)

    async def create(self, client_id: str, name: str) -> tuple[accounts_pb2.ApiKey, str]:
        """A new key: its record and the secret, which is shown this once and never stored."""
        answer = await self._client.call(
            self._stub.CreateApiKey,
            accounts_pb2.CreateApiKeyRequest(client_id=client_id, name=name),
        )
        return answer.api_key, answer.key

    async def list(self, client_id: str = "", limit: int = 200) -> list[accounts_pb2.ApiKey]:
        async def fetch(token: str) -> tuple[list[accounts_pb2.ApiKey], str]:
            page = await self._client.call(
                self._stub.ListApiKeys,
                accounts_pb2.ListApiKeysRequest(
                    client_id=client_id, page_size=min(limit, 200), page_token=token
                ),
            )
            return list(page.api_keys), page.next_page_token

        return await self._client.pages(fetch, limit)

    async def revoke(self, api_key_id: str) -> accounts_pb2.ApiKey:
        answer = await self._client.call(
            self._stub.RevokeApiKey, accounts_pb2.RevokeApiKeyRequest(api_key_id=api_key_id)
        )
        return answer.api_key


class Templates:
    """Master templates, at KAM (`client.templates`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._stub = templates_pb2_grpc.TemplateServiceStub(client._kam)

    async def list(
        self, *, include_deprecated: bool = False, limit: int = 200
    ) -> list[templates_pb2.MasterTemplate]:
        """The latest version of each template, by name."""

        async def fetch(token: str) -> tuple[list[templates_pb2.MasterTemplate], str]:
            page = await self._client.call(
                self._stub.ListMasterTemplates,
                templates_pb2.ListMasterTemplatesRequest(
                    page_size=min(limit, 200),
                    page_token=token,
                    include_deprecated=include_deprecated,
                ),
            )
            return list(page.templates), page.next_page_token

        return await self._client.pages(fetch, limit)

    async def get(self, name: str, version: int = 0) -> templates_pb2.MasterTemplate:
        """A template, the latest version unless `version` is given."""
        answer = await self._client.call(
            self._stub.GetMasterTemplate,
            templates_pb2.GetMasterTemplateRequest(name=name, version=version),
        )
        return answer.template

    async def create(
        self, template: templates_pb2.MasterTemplate | Mapping[str, Any]
    ) -> templates_pb2.MasterTemplate:
        """Stores a template (a new version when the name exists; admins only). A mapping is
        read as the template's JSON form, with the proto's field names."""
        if not isinstance(template, templates_pb2.MasterTemplate):
            template = json_format.ParseDict(dict(template), templates_pb2.MasterTemplate())
        answer = await self._client.call(
            self._stub.CreateMasterTemplate,
            templates_pb2.CreateMasterTemplateRequest(template=template),
        )
        return answer.template
