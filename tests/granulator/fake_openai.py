"""A real local HTTP server that speaks the OpenAI chat completions API, scripted per test.

It runs on 127.0.0.1, port 0, in the test's event loop (plain asyncio streams, HTTP/1.1, one
request per connection). Each request to ``POST /v1/chat/completions`` takes the next scripted
`Step` from the queue: a reply (sent as JSON, or as a server-sent-event stream when the request
asked for ``stream``), an error status with headers such as ``Retry-After``, or either after a
delay. Every request body is kept in `requests` for assertions.

`only_modes` makes it a server that takes only some structured-output modes (see
`granulator_server.providers.formats`), like the real ones: a request in any other mode gets
the `rejection` step (say, llama.cpp's 500 naming `response_format`) without using the script.

`hold_until` holds every call until that many calls have arrived (a test that proves calls are in
flight at once); `most_in_flight` is the most calls that were unanswered at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """One scripted answer."""

    content: str = ""
    finish_reason: str = "stop"
    refusal: str | None = None
    prompt_tokens: int = 100
    completion_tokens: int = 50
    #: False: no usage block (plain replies) or chunk (streams), as some local servers do.
    include_usage: bool = True
    status: int = 200
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    pieces: int = 8


def reply(content: str | dict[str, Any], **options: Any) -> Step:
    text = content if isinstance(content, str) else json.dumps(content)
    return Step(content=text, **options)


def failure(status: int, message: str = "", **options: Any) -> Step:
    return Step(status=status, error=message or f"status {status}", **options)


def request_mode(request: dict[str, Any]) -> str:
    """The structured-output mode a request body asks for."""
    response_format = request.get("response_format")
    if response_format is None:
        return "prompt"
    if response_format.get("type") == "json_object":
        return "json_object_schema" if "schema" in response_format else "json_object"
    return str(response_format.get("type"))


#: How llama-cpp-python's server answers `response_format: json_schema` (a 500 whose body is the
#: pydantic validation error).
LLAMA_CPP_REJECTION = Step(
    status=500,
    error="1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input "
    "should be 'text' or 'json_object' [type=literal_error, input_value='json_schema']",
)


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[Step] = deque()
        #: When set, the structured-output modes this server takes; others get `rejection`.
        self.only_modes: set[str] | None = None
        self.rejection = Step(status=400, error="unsupported response_format")
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []
        #: Each call waits until this many calls have arrived before it is answered (0: no wait).
        self.hold_until = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""

    def add(self, *steps: Step) -> None:
        self.script.extend(steps)

    async def wait_for_requests(self, count: int = 1) -> None:
        """Returns once `count` requests have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        method, path, _ = request_line.split(" ", 2)
        if method != "POST" or not path.startswith("/v1/chat/completions"):
            await _send(writer, 404, {"error": {"message": f"no route {path}"}})
            return
        request = json.loads(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._reply(writer, request)
        finally:
            self.in_flight -= 1

    async def _reply(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        self.requests.append(request)
        self.arrivals.append(time.monotonic())
        async with self._arrived:
            self._arrived.notify_all()
            if self.hold_until:
                await self._arrived.wait_for(lambda: len(self.requests) >= self.hold_until)
        if self.only_modes is not None and request_mode(request) not in self.only_modes:
            step = self.rejection
        else:
            step = self.script.popleft() if self.script else failure(500, "script exhausted")
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.status != 200:
            error = {"error": {"message": step.error, "type": "scripted", "code": None}}
            await _send(writer, step.status, error, step.headers)
        elif request.get("stream"):
            await self._stream(writer, request, step)
        else:
            await _send(writer, 200, _completion(request, step), step.headers)

    async def _stream(
        self, writer: asyncio.StreamWriter, request: dict[str, Any], step: Step
    ) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in step.headers.items())
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n{extra}\r\n"
        )
        writer.write(head.encode())
        size = max(1, -(-len(step.content) // step.pieces))
        pieces = [step.content[i : i + size] for i in range(0, len(step.content), size)]
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0}
        base["model"] = request.get("model", "")
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in pieces]
        if step.refusal:
            deltas.append({"refusal": step.refusal})
        for index, delta in enumerate(deltas):
            last = index == len(deltas) - 1
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": step.finish_reason if last else None,
            }
            await _event(writer, {**base, "choices": [choice]})
            if step.chunk_delay:
                await asyncio.sleep(step.chunk_delay)
        if step.include_usage and (request.get("stream_options") or {}).get("include_usage"):
            await _event(writer, {**base, "choices": [], "usage": _usage(step)})
        await _chunk(writer, b"data: [DONE]\n\n")
        await _chunk(writer, b"")


def _usage(step: Step) -> dict[str, int]:
    return {
        "prompt_tokens": step.prompt_tokens,
        "completion_tokens": step.completion_tokens,
        "total_tokens": step.prompt_tokens + step.completion_tokens,
    }


def _completion(request: dict[str, Any], step: Step) -> dict[str, Any]:
    completion: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if step.refusal else step.content,
                    "refusal": step.refusal,
                },
                "finish_reason": step.finish_reason,
            }
        ],
    }
    if step.include_usage:
        completion["usage"] = _usage(step)
    return completion


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} Scripted",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()


async def _event(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    await _chunk(writer, f"data: {json.dumps(data)}\n\n".encode())


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
    await writer.drain()
