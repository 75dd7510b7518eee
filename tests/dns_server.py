"""A real DNS server on a loopback UDP port that answers A records for the names it is given, so
that tests can reach replicas through one name: `dns://127.0.0.1:PORT/kam.test:50051` (gRPC's
resolver asks the server named in the target's authority; nothing on the machine changes)."""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType

_A, _IN = 1, 1


class DnsServer:
    """`with DnsServer({"kam.test": ["127.0.0.2", "127.0.0.3"]}) as dns: dns.target(...)`"""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = {name.lower(): list(ips) for name, ips in records.items()}
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = int(self._socket.getsockname()[1])
        self.queries: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def target(self, name: str, port: int) -> str:
        """A gRPC target resolving `name` through this server."""
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def answer(self, query: bytes) -> bytes:
        ident = struct.unpack("!H", query[:2])[0]
        labels, at = [], 12
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode())
            at += 1 + query[at]
        qtype = struct.unpack("!H", query[at + 1 : at + 3])[0]
        question = query[12 : at + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        known = name in self.records
        ips = self.records[name] if known and qtype == _A else []
        # QR + RD + RA; NXDOMAIN for an unknown name; no records for other types (AAAA, TXT).
        flags = 0x8180 | (0 if known else 3)
        header = struct.pack("!HHHHHH", ident, flags, 1, len(ips), 0, 0)
        answers = b"".join(
            struct.pack("!HHHIH", 0xC00C, _A, _IN, 5, 4) + socket.inet_aton(ip) for ip in ips
        )
        return header + question + answers

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                query, peer = self._socket.recvfrom(512)
            except TimeoutError:
                continue
            self._socket.sendto(self.answer(query), peer)

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()
