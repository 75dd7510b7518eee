"""How a client connects: TLS material, and how it retries a server it cannot reach."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import grpc


def _read(value: bytes | str | Path | None) -> bytes | None:
    """PEM given as bytes, or as the path of a file holding it."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS for every channel. `ca` verifies the servers (default: the system's roots); `cert` and
    `key` present a client certificate, for servers that ask for one (mutual TLS). Each is PEM
    bytes or the path of a PEM file."""

    ca: bytes | str | Path | None = None
    cert: bytes | str | Path | None = None
    key: bytes | str | Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: a client certificate needs both cert and key")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


@dataclass(frozen=True)
class Retry:
    """Retries of calls that fail UNAVAILABLE (the server could not be reached): at most
    `attempts` tries in all, waiting `initial` seconds before the second and growing by
    `multiplier` up to `maximum`, each wait jittered by ±20 %. Watches reconnect under the same
    policy, counted afresh after every event received."""

    attempts: int = 5
    initial: float = 0.2
    maximum: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> list[float]:
        """The waits between the tries."""
        waits = []
        wait = self.initial
        for _ in range(max(0, self.attempts - 1)):
            waits.append(min(wait, self.maximum) * random.uniform(0.8, 1.2))
            wait *= self.multiplier
        return waits


NO_RETRY = Retry(attempts=1)
