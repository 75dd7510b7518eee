"""How many messages a watcher receives per single-stage execution, one event per message and
batched, and how many writes the gateway's SSE makes for it.

Method: the mesh runs as real processes (SQLite, the offline provider, the default one-stage
template), executions one at a time (an idle mesh). Every execution is watched from its
ExecuteRequest on by three watchers at once, so all three see the same timing: a WatchExecution
stream with `batched` false (what every watcher sent before session 4), one with `batched` true
(what `bitware_client`, the CLI and the gateway send now), and the gateway's
`GET /api/executions/{id}/events`, read off the socket chunk by chunk (uvicorn writes each body
piece the gateway yields as one HTTP chunk), counting the chunks that carry events.

    .venv/bin/python bench/watch_messages.py [--n 20] [--provider offline|noop]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bitware.orchestrator.v1 import orchestrator_pb2


async def count_stream(mesh: Any, client: Any, execution_id: str, batched: bool) -> list[int]:
    """Events per message, until the terminal event."""
    from common import TERMINAL

    sizes = []
    call = mesh.orchestrator.WatchExecution(
        orchestrator_pb2.WatchExecutionRequest(execution_id=execution_id, batched=batched),
        metadata=client.key,
        timeout=120,
    )
    try:
        async for message in call:
            events = list(message.events) if batched else [message.event]
            sizes.append(len(events))
            if events[-1].type in TERMINAL:
                break
    finally:
        call.cancel()
    return sizes


async def count_sse(gateway: str, key: str, execution_id: str) -> list[int]:
    """Events per HTTP chunk of the SSE answer (chunks without an event left out)."""
    host, _, port = gateway.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            (
                f"GET /api/executions/{execution_id}/events HTTP/1.1\r\nHost: {gateway}\r\n"
                f"X-API-Key: {key}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"chunked" in head.lower(), head
        sizes = []
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                return sizes
            chunk = (await reader.readexactly(size + 2))[:-2].decode()
            frames = sum(1 for line in chunk.split("\n") if line.startswith("id: "))
            if frames:
                sizes.append(frames)
    finally:
        writer.close()


async def run(a: argparse.Namespace) -> dict[str, list[list[int]]]:
    from common import Mesh, MeshOptions, submit

    found: dict[str, list[list[int]]] = {"one": [], "batched": [], "sse": []}
    async with Mesh(MeshOptions(provider=a.provider, clients=1)) as mesh:
        client = mesh.clients[0]
        key = dict(client.key)["x-api-key"]
        for _ in range(a.n):
            execution_id = await submit(mesh, client)
            one, batched, sse = await asyncio.wait_for(
                asyncio.gather(
                    count_stream(mesh, client, execution_id, False),
                    count_stream(mesh, client, execution_id, True),
                    count_sse(mesh.gateway_address, key, execution_id),
                ),
                120,
            )
            assert sum(one) == sum(batched) == sum(sse), (one, batched, sse)
            found["one"].append(one)
            found["batched"].append(batched)
            found["sse"].append(sse)
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20, help="executions")
    ap.add_argument("--provider", default="offline", help="offline (default) or noop")
    a = ap.parse_args()
    from common import loadavg, save, table

    load0 = loadavg()
    found = asyncio.run(run(a))
    labels = {
        "one": "WatchExecution, one event per message (before)",
        "batched": "WatchExecution, batched (bitware_client, CLI)",
        "sse": "gateway SSE, event-carrying writes",
    }
    rows = []
    for name, runs in found.items():
        counts = [len(sizes) for sizes in runs]
        rows.append(
            [
                labels[name],
                len(runs),
                f"{sum(map(sum, runs)) / len(runs):.1f}",
                f"{sum(counts) / len(counts):.2f} ({min(counts)}–{max(counts)})",
                max(max(sizes) for sizes in runs),
            ]
        )
    print(f"\n{a.n} single-stage executions ({a.provider}), one at a time; load avg {load0}")
    print(table(["watcher", "executions", "events/exec", "messages/exec", "largest"], rows))
    path = save("watch_messages", {"n": a.n, "provider": a.provider, "found": found})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
