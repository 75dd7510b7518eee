"""Webhooks: a client's endpoints, the events queued for them, and how each is signed.

An event (a request that finished, a budget alert) is queued as one delivery row per endpoint
of the client that wants it, in the same transaction as the change it reports: if the change
commits, its deliveries exist, and a KAM restart loses none. `kam_server.delivery` posts them.

Signing secrets are derived, not stored: an endpoint's secret is HMAC-SHA256 of its id under
KAM's webhook key (a file generated on first start, `BITWARE_WEBHOOK_KEY_FILE`), shown once when
the endpoint is created. The database alone therefore reveals no secret, and there is nothing
to decrypt. Each endpoint remembers which key (`key_id`) its secret came from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import new_id, next_page_token, page_window, utcnow
from bitware_core.errors import Violations
from bitware_core.sql import Tx
from kam_server import audit, models
from kam_server.accounts import named_or_own_client
from kam_server.errors import WebhookEndpointNotFound, WebhookLimit

EVENT_TYPES = ("request.completed", "request.failed", "request.cancelled", "budget.threshold")
#: Endpoints one client may have.
MAX_ENDPOINTS = 10
SECRET_PREFIX = "whsec_"
#: Set in a transaction's `info` when it queued deliveries, so that the deliverer looks at once.
QUEUED = "webhooks_queued"


class WebhookKey:
    """KAM's webhook key: 32 random bytes in a file (hex), created on first start with mode
    0600 if missing. `id` names it without revealing it."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.id = hashlib.sha256(b"bitware-webhook-key-id|" + key).hexdigest()[:16]

    @classmethod
    def load(cls, path: Path) -> WebhookKey:
        if not path.exists():
            # Written aside, then linked into place: two processes starting at once agree on
            # one key, and no reader ever sees a half-written file.
            scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(secrets.token_hex(32) + "\n")
            try:
                os.link(scratch, path)
            except FileExistsError:
                pass
            finally:
                scratch.unlink()
        text = path.read_text(encoding="ascii").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 32:
            raise ValueError(f"{path} must hold at least 32 bytes as hex (64 characters)")
        return cls(key)

    def secret_for(self, endpoint_id: str) -> str:
        digest = hmac.new(self._key, f"endpoint|{endpoint_id}".encode(), hashlib.sha256).digest()
        return SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Bitware-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def url_problem(url: str, allow_insecure: bool) -> str:
    """Why `url` may not receive webhooks, or "" when it may. Literal addresses inside the
    network (loopback, private, link-local) are refused so that a client cannot make KAM post
    into it; loopback over http is allowed only when insecure webhooks are."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if not host or parts.scheme not in ("http", "https"):
        return "must be an https:// URL"
    if parts.username or parts.password:
        return "must not hold credentials"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    loopback = host == "localhost" or (address is not None and address.is_loopback)
    if allow_insecure and loopback:
        return ""
    if parts.scheme != "https":
        return "must be an https:// URL"
    if loopback or (address is not None and (address.is_private or address.is_link_local)):
        return "must not point at a loopback, private or link-local address"
    return ""


def create_endpoint(
    session: Session,
    actor: Principal,
    key: WebhookKey,
    allow_insecure: bool,
    client_id: str,
    url: str,
    event_types: list[str],
    description: str,
) -> tuple[models.WebhookEndpoint, str]:
    """A new endpoint of the client and its signing secret (shown once)."""
    client = named_or_own_client(session, actor, client_id)
    problems = Violations()
    problem = url_problem(url.strip(), allow_insecure)
    problems.check(not problem, "url", problem)
    problems.check(len(url) <= 2000, "url", "must be at most 2000 characters")
    for index, kind in enumerate(event_types):
        problems.check(
            kind in EVENT_TYPES, f"event_types[{index}]", f"must be one of {EVENT_TYPES}"
        )
    problems.check(len(description) <= 200, "description", "must be at most 200 characters")
    problems.raise_if_any()
    live = session.scalars(
        select(models.WebhookEndpoint.id).where(
            models.WebhookEndpoint.client_id == client.id, models.WebhookEndpoint.deleted.is_(False)
        )
    ).all()
    if len(live) >= MAX_ENDPOINTS:
        raise WebhookLimit(client.id, MAX_ENDPOINTS)
    endpoint = models.WebhookEndpoint(
        id=new_id("whe"),
        client_id=client.id,
        url=url.strip(),
        event_types=sorted(set(event_types)),
        description=description.strip(),
        key_id=key.id,
        created_at=utcnow(),
        deleted=False,
    )
    session.add(endpoint)
    audit.record(session, actor, "webhook.create", f"webhooks/{endpoint.id}", url=endpoint.url)
    return endpoint, key.secret_for(endpoint.id)


def list_endpoints(
    session: Session, actor: Principal, client_id: str, page_size: int, page_token: str
) -> tuple[list[models.WebhookEndpoint], str]:
    offset, limit = page_window(page_size, page_token)
    client = named_or_own_client(session, actor, client_id)
    query = (
        select(models.WebhookEndpoint)
        .where(
            models.WebhookEndpoint.client_id == client.id, models.WebhookEndpoint.deleted.is_(False)
        )
        .order_by(models.WebhookEndpoint.created_at, models.WebhookEndpoint.id)
    )
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def _endpoint(session: Session, actor: Principal, endpoint_id: str) -> models.WebhookEndpoint:
    row = session.get(models.WebhookEndpoint, endpoint_id) if endpoint_id else None
    if row is None or row.deleted or not actor.visible_client(row.client_id):
        raise WebhookEndpointNotFound(endpoint_id)
    return row


def delete_endpoint(session: Session, actor: Principal, endpoint_id: str) -> None:
    """Deletes the endpoint; what was still pending for it is given up."""
    row = _endpoint(session, actor, endpoint_id)
    row.deleted = True
    # One statement, and the lease cleared: a post in flight now settles nothing (its claim no
    # longer matches), so a given-up delivery never turns back into a pending one.
    session.execute(
        update(models.WebhookDelivery)
        .where(
            models.WebhookDelivery.endpoint_id == row.id,
            models.WebhookDelivery.status == "pending",
        )
        .values(
            status="failed",
            last_error="the endpoint was deleted",
            next_attempt_at=None,
            claim="",
            claimed_until=None,
        )
    )
    audit.record(session, actor, "webhook.delete", f"webhooks/{row.id}")


def list_deliveries(
    session: Session,
    actor: Principal,
    endpoint_id: str,
    client_id: str,
    page_size: int,
    page_token: str,
) -> tuple[list[models.WebhookDelivery], str]:
    offset, limit = page_window(page_size, page_token)
    query = select(models.WebhookDelivery)
    if endpoint_id:
        endpoint = _endpoint(session, actor, endpoint_id)
        query = query.where(models.WebhookDelivery.endpoint_id == endpoint.id)
    else:
        client = named_or_own_client(session, actor, client_id)
        query = query.where(models.WebhookDelivery.client_id == client.id)
    query = query.order_by(models.WebhookDelivery.seq.desc())
    rows = list(session.scalars(query.offset(offset).limit(limit + 1)))
    return rows[:limit], next_page_token(offset, limit, len(rows))


def enqueue(tx: Tx, client_id: str, event_type: str, data: dict[str, Any]) -> int:
    """Queues one event for every endpoint of the client that wants it, in the caller's
    transaction; returns how many deliveries were queued. The body is fixed now, so that every
    attempt posts (and signs) the same bytes."""
    endpoints = [
        endpoint_id
        for endpoint_id, kinds in tx.all(
            "SELECT id, event_types FROM webhook_endpoints"
            " WHERE client_id = :client AND deleted = :no ORDER BY created_at, id",
            {"client": client_id, "no": False},
        )
        if not Tx.loads(kinds) or event_type in Tx.loads(kinds)
    ]
    if not endpoints:
        return 0
    # The client's row, locked (a no-op where the caller holds it already): one client's events
    # take their `seq` in the order their transactions commit, so none is queued behind a
    # later one on PostgreSQL, where a sequence number is drawn before the commit.
    tx.execute(f"SELECT id FROM clients WHERE id = :id{tx.lock()}", {"id": client_id})
    tx.info[QUEUED] = True
    now = utcnow()
    event_id = new_id("evt")
    body = json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "create_time": now.isoformat(timespec="milliseconds") + "Z",
            "client_id": client_id,
            "data": data,
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    tx.many(
        "INSERT INTO webhook_deliveries (id, event_id, event_type, endpoint_id, client_id,"
        " payload, status, attempts, last_http_status, last_error, created_at, next_attempt_at,"
        " claim) VALUES (:id, :event, :type, :endpoint, :client, :payload, 'pending', 0, 0, '',"
        " :now, :now, '')",
        [
            {
                "id": new_id("whd"),
                "event": event_id,
                "type": event_type,
                "endpoint": endpoint_id,
                "client": client_id,
                "payload": body,
                "now": tx.ts(now),
            }
            for endpoint_id in endpoints
        ],
    )
    return len(endpoints)


def request_event(tx: Tx, row: models.ClientRequest) -> None:
    """Queues `request.<status>` for a request that has just finished."""
    enqueue(
        tx,
        row.client_id,
        f"request.{row.status}",
        {
            "request": {
                "request_id": row.id,
                "status": row.status,
                "execution_id": row.execution_id,
                "master_template": row.master_template,
                "cost_usd": row.cost_usd,
                "job_id": row.job_id,
                "error_message": row.error_message,
            }
        },
    )


def next_attempt(
    created_at: datetime, attempts: int, base: float, now: datetime
) -> datetime | None:
    """When to try again after `attempts` failed ones: `base` seconds, doubling each time up to
    an hour; None once that falls more than 24 hours after the event (give up)."""
    wait = min(base * 2 ** (attempts - 1), 3600.0)
    due = now + timedelta(seconds=wait)
    return due if due <= created_at + timedelta(hours=24) else None
