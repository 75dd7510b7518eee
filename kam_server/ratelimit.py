"""Per-client request rate limits: a token bucket per client, sized and refilled by its tier
(`bitware_core.tiers`), for the calls that create, execute or retry requests.

The bucket lives in KAM's database, so several KAM replicas on PostgreSQL draw from the same
one (the row is locked while a call takes its token). A call that finds it empty is refused
with RESOURCE_EXHAUSTED (reason RATE_LIMITED) and a RetryInfo saying when a token is back.
"""

from __future__ import annotations

from datetime import datetime

from bitware_core.db import utcnow
from bitware_core.sql import Tx
from bitware_core.tiers import TIER_LIMITS
from kam_server.errors import RateLimited

_SELECT = "SELECT tokens, updated_at FROM rate_buckets WHERE client_id = :id"


def take(tx: Tx, client_id: str, tier: str, now: datetime | None = None) -> None:
    """Takes one token from the client's bucket, or raises RateLimited."""
    limits = TIER_LIMITS[tier]
    now = now or utcnow()
    row = tx.one(_SELECT + tx.lock(), {"id": client_id})
    if row is None:  # the client's first call: a full bucket (another replica may race us)
        tx.execute(
            "INSERT INTO rate_buckets (client_id, tokens, updated_at)"
            " VALUES (:id, :tokens, :at) ON CONFLICT (client_id) DO NOTHING",
            {"id": client_id, "tokens": float(limits.request_burst), "at": tx.ts(now)},
        )
        row = tx.one(_SELECT + tx.lock(), {"id": client_id})
    since = tx.when(row[1]) or now
    elapsed = max(0.0, (now - since).total_seconds())
    tokens = min(float(limits.request_burst), float(row[0]) + elapsed * limits.requests_per_second)
    if tokens < 1.0:
        wait = (1.0 - tokens) / limits.requests_per_second
        raise RateLimited(
            client_id, tier, limits.requests_per_second, limits.request_burst, retry_after=wait
        )
    tx.execute(
        "UPDATE rate_buckets SET tokens = :tokens, updated_at = :at WHERE client_id = :id",
        {"id": client_id, "tokens": tokens - 1.0, "at": tx.ts(now)},
    )
