"""Stage outputs: small ones inline, large ones by reference (`sha256:<hex>`) in the blobs
table, checked against their checksum whenever they are read; oversized ones refused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bitware_core.sql import Tx, insert_rows
from orchestrator_server import models
from orchestrator_server.errors import CorruptPayload

#: Outputs larger than this (as JSON) are stored by reference.
INLINE_LIMIT = 256 * 1024
#: Outputs larger than this fail their stage for good (error class TOO_LARGE).
HARD_LIMIT = 16 * 1024 * 1024


def encode(output: dict[str, Any]) -> bytes:
    return json.dumps(output, separators=(",", ":"), sort_keys=True).encode()


def store(tx: Tx, output: dict[str, Any], data: bytes) -> tuple[dict[str, Any], str]:
    """(inline output, "") for small outputs; ({}, reference) for large ones. `data` is
    `encode(output)`, which the caller has already made to check the size."""
    if len(data) <= INLINE_LIMIT:
        return output, ""
    digest = hashlib.sha256(data).hexdigest()
    if tx.one("SELECT 1 FROM blobs WHERE sha256 = :digest", {"digest": digest}) is None:
        insert_rows(tx, models.Blob, [{"sha256": digest, "size": len(data), "content": data}])
    return {}, f"sha256:{digest}"


def load(tx: Tx, reference: str) -> dict[str, Any]:
    """The output a reference names, after checking its checksum."""
    digest = reference.removeprefix("sha256:")
    row = tx.one("SELECT content FROM blobs WHERE sha256 = :digest", {"digest": digest})
    if row is None:
        raise CorruptPayload(reference, missing=True)
    content = bytes(row[0])
    if hashlib.sha256(content).hexdigest() != digest:
        raise CorruptPayload(reference, missing=False)
    loaded: dict[str, Any] = json.loads(content)
    return loaded
