"""Server-Sent Events from a gRPC server stream: the execution's event log as
`id: <sequence>` / `event: <type>` / `data: <json>` frames, for `EventSource` in a browser.

The stream is asked for batches (`WatchExecutionRequest.batched`): the frames of the events one
message carries go to the HTTP stream in one write, each still a frame with its own `id:`, so a
browser resumes with Last-Event-ID exactly as with one event per write.

The upstream call is made inside the generator and cancelled in its `finally`, so a browser that
goes away (the response task is cancelled) ends the gRPC stream too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from bitware.orchestrator.v1 import orchestrator_pb2
from gateway.calls import message_json
from gateway.errors import rpc_error
from gateway.metrics import Metrics

#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: How long an `EventSource` waits before reconnecting, in milliseconds.
RECONNECT_MS = 2000

WatchCall = grpc.aio.UnaryStreamCall[
    orchestrator_pb2.WatchExecutionRequest, orchestrator_pb2.WatchExecutionResponse
]


def frame(data: dict[str, Any], event: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_frame(event: orchestrator_pb2.ExecutionEvent) -> str:
    name = orchestrator_pb2.EventType.Name(event.type).removeprefix("EVENT_TYPE_")
    return frame(message_json(event), name, event.sequence)


def message_frames(message: orchestrator_pb2.WatchExecutionResponse) -> str:
    """The frames of every event a stream message carries, in order: its `events` (a batched
    stream), or its one `event` (an orchestrator that predates batches sends that)."""
    if message.events:
        return "".join(event_frame(event) for event in message.events)
    return event_frame(message.event)


def _settle(read: asyncio.Future[Any] | None) -> None:
    if read is None:
        return
    if not read.done():
        read.cancel()
    elif not read.cancelled():
        read.exception()  # retrieved, so asyncio does not report it as lost


async def execution_events(
    open_stream: Callable[[], WatchCall], metrics: Metrics
) -> AsyncGenerator[str, None]:
    """Frames until the stream ends. An upstream failure becomes a final `event: error` frame
    with the usual error body; a deadline just ends the stream (the browser resumes)."""
    metrics.open_streams.inc()
    stream = open_stream()
    read: asyncio.Future[Any] | None = None
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            read = asyncio.ensure_future(stream.read())
            while not (await asyncio.wait({read}, timeout=KEEPALIVE_SECONDS))[0]:
                yield ": keep-alive\n\n"
            message = read.result()
            if message is grpc.aio.EOF:
                return
            yield message_frames(message)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            metrics.upstream_error(error.code().name)
            yield frame(rpc_error(error)[1], "error")
    finally:
        stream.cancel()
        _settle(read)
        metrics.open_streams.dec()


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` answer whose generator is always closed when the response ends,
    however it ends (finished, failed, or the client went away)."""

    media_type = "text/event-stream"
    body_iterator: AsyncGenerator[str, None]

    def __init__(self, content: AsyncGenerator[str, None], status_code: int = 200) -> None:
        super().__init__(
            content,
            status_code,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
