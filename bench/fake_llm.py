"""A local OpenAI-compatible endpoint that answers at once, for the benches (run as a process).

The approach of tests/granulator/fake_openai.py, cut down to what a load test needs: plain asyncio
streams on 127.0.0.1, `POST /v1/chat/completions`, but HTTP/1.1 keep-alive (the `openai` client
pools its connections, as it would against a real provider) and no script: every request gets the
same valid course document — the offline generator's output for the bench topic, so it passes the
granulator's schema check and quality gate and the real client path (request, stream parsing,
usage, validation, scoring, storage) is what gets counted. Streams when asked (`stream: true`,
8 pieces, then a usage chunk), as the granulator asks.

`--delay S` answers each call after S seconds, as a real model takes its time (bench/slow_model.py).
`GET /stats` answers `{"requests": …, "in_flight": …, "most_in_flight": …}`: calls received, calls
not yet answered, and the most that were at once.

    .venv/bin/python bench/fake_llm.py [--port 0] [--delay 0]   # prints `FAKE_LLM_READY <port>`,
                                                    # serves until SIGTERM or --max-life seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any

from granulator_server.domain import SEED_TEMPLATES, generate_offline

TOPIC, AUDIENCE, GRANULARITY = "Bench Topic", "engineers", 3
PIECES = 8


def _document() -> str:
    course = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
    return json.dumps(generate_offline(course, TOPIC, AUDIENCE, GRANULARITY, {}))


class FakeLLM:
    def __init__(self, delay: float = 0.0) -> None:
        self.content = _document()
        size = -(-len(self.content) // PIECES)
        self.pieces = [self.content[i : i + size] for i in range(0, len(self.content), size)]
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: one connection, many requests
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (h := (await reader.readline()).decode().strip()) != "":
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, path, _ = line.decode().split(" ", 2)
                if method == "GET" and path == "/stats":
                    await self._json(writer, 200, self.stats())
                    continue
                if method != "POST" or not path.startswith("/v1/chat/completions"):
                    await self._json(writer, 404, {"error": {"message": f"no route {path}"}})
                    continue
                self.requests += 1
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    await self._answer(writer, json.loads(body))
                finally:
                    self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.get("stream"):
            await self._stream(writer, request)
        else:
            await self._json(writer, 200, self._completion(request))

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "most_in_flight": self.most_in_flight,
        }

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": 900, "completion_tokens": 700, "total_tokens": 1600}

    def _completion(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.content, "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(),
        }

    async def _json(self, writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        writer.write(head.encode() + data)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        base = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": request.get("model", ""),
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in self.pieces]
        out = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        ]
        for index, delta in enumerate(deltas):
            finish = "stop" if index == len(deltas) - 1 else None
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            out.append(_chunk(f"data: {json.dumps(chunk)}\n\n".encode()))
        if (request.get("stream_options") or {}).get("include_usage"):
            out.append(
                _chunk(
                    f"data: {json.dumps({**base, 'choices': [], 'usage': self._usage()})}\n\n".encode()
                )
            )
        out.append(_chunk(b"data: [DONE]\n\n"))
        out.append(_chunk(b""))
        writer.write(b"".join(out))  # "answers at once": the whole stream in one write
        await writer.drain()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


async def main(port: int, max_life: float, delay: float) -> None:
    fake = FakeLLM(delay)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", port)
    print(f"FAKE_LLM_READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_life)
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-life", type=float, default=3600.0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    a = ap.parse_args()
    asyncio.run(main(a.port, a.max_life, a.delay))
