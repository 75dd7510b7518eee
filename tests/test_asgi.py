"""The one uvicorn launcher (`bitware_core.asgi`) the gateway and the local model's process
serve with: bound first (port 0 picks a port), the ready line once it listens, the app answers,
and SIGTERM stops it gracefully with exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from bitware_core import asgi
from bitware_core.server import ListenError

APP = """
import asyncio
from bitware_core import asgi

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

server = asgi.AsgiServer(app, asgi.bind("127.0.0.1", 0), "127.0.0.1")
assert asyncio.run(asgi.serve(server, "toy"))
"""


def test_an_app_is_served_on_a_bound_port_and_stops_on_sigterm_with_0() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line[:2] == ["BITWARE_READY", "toy"]
        with urllib.request.urlopen(f"http://{line[2]}/", timeout=30) as answer:
            assert answer.read() == b"hello"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()


def test_an_address_in_use_is_a_listen_error() -> None:
    taken = asgi.bind("127.0.0.1", 0)
    try:
        with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:"):
            asgi.bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
