"""`Client`: the same API as `AsyncClient` for programs without an event loop.

It runs one `AsyncClient` on a private event loop in a daemon thread, so both share every rule
(deadlines, retries, errors, resume) instead of keeping two copies of each call in step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from bitware.orchestrator.v1 import orchestrator_pb2, registry_pb2
from bitware_client.aio import ApiKeys, AsyncClient, Executions, Requests, Templates
from bitware_client.events import ProgressEvent, RunResult
from bitware_client.options import TLS, Retry

Params = ParamSpec("Params")
Result = TypeVar("Result")


class _Loop:
    """An event loop in a thread of its own, running the coroutines it is handed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, Result]) -> Result:
        future: Future[Result] = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def blocking(
        self, method: Callable[Params, Coroutine[Any, Any, Result]]
    ) -> Callable[Params, Result]:
        def call(*args: Params.args, **kwargs: Params.kwargs) -> Result:
            return self.run(method(*args, **kwargs))

        call.__doc__ = method.__doc__
        return call

    def iterate(self, stream: AsyncIterator[Result]) -> Iterator[Result]:
        try:
            while True:
                try:
                    yield self.run(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            self.run(_close(stream))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _next(stream: AsyncIterator[Result]) -> Result:
    return await anext(stream)


async def _close(stream: AsyncIterator[Any]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        await closer()


class _Blocking:
    """Each public coroutine method of an `AsyncClient` namespace, made blocking."""

    def __init__(self, loop: _Loop, inner: Requests | Executions | ApiKeys | Templates) -> None:
        self._loop = loop
        self._inner = inner


class SyncRequests(_Blocking):
    def __init__(self, loop: _Loop, inner: Requests) -> None:
        super().__init__(loop, inner)
        self.create = loop.blocking(inner.create)
        self.execute = loop.blocking(inner.execute)
        self.get = loop.blocking(inner.get)
        self.list = loop.blocking(inner.list)
        self.cancel = loop.blocking(inner.cancel)
        self.retry = loop.blocking(inner.retry)


class SyncExecutions(_Blocking):
    def __init__(self, loop: _Loop, inner: Executions) -> None:
        super().__init__(loop, inner)
        self.get = loop.blocking(inner.get)
        self.list = loop.blocking(inner.list)


class SyncApiKeys(_Blocking):
    def __init__(self, loop: _Loop, inner: ApiKeys) -> None:
        super().__init__(loop, inner)
        self.create = loop.blocking(inner.create)
        self.list = loop.blocking(inner.list)
        self.revoke = loop.blocking(inner.revoke)


class SyncTemplates(_Blocking):
    def __init__(self, loop: _Loop, inner: Templates) -> None:
        super().__init__(loop, inner)
        self.list = loop.blocking(inner.list)
        self.get = loop.blocking(inner.get)
        self.create = loop.blocking(inner.create)


class Client:
    """A blocking client of one mesh; the arguments are `AsyncClient`'s. Use it in a `with`
    block, or call `close()`."""

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
        self._loop = _Loop()

        async def build() -> AsyncClient:  # grpc.aio channels belong to the loop they start on
            return AsyncClient(
                address,
                orchestrator=orchestrator,
                granulator=granulator,
                api_key=api_key,
                session_token=session_token,
                tls=tls,
                timeout=timeout,
                retry=retry,
            )

        self.aio = self._loop.run(build())
        self.requests = SyncRequests(self._loop, self.aio.requests)
        self.executions = SyncExecutions(self._loop, self.aio.executions)
        self.keys = SyncApiKeys(self._loop, self.aio.keys)
        self.templates = SyncTemplates(self._loop, self.aio.templates)
        self.login = self._loop.blocking(self.aio.login)
        self.logout = self._loop.blocking(self.aio.logout)
        self.run = self._loop.blocking(self.aio.run)
        self.structure = self._loop.blocking(self.aio.structure)

    def queue(self) -> orchestrator_pb2.GetQueueResponse:
        return self._loop.run(self.aio.queue())

    def workers(self, limit: int = 1000) -> list[registry_pb2.Worker]:
        return self._loop.run(self.aio.workers(limit))

    def watch(
        self, execution_id: str, *, after_sequence: int = 0, timeout: float = 3600.0
    ) -> Iterator[ProgressEvent]:
        """See `AsyncClient.watch`. Close the iterator (or finish it) to end the stream."""
        return self._loop.iterate(
            self.aio.watch(execution_id, after_sequence=after_sequence, timeout=timeout)
        )

    def close(self) -> None:
        self._loop.run(self.aio.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["Client", "RunResult"]
