"""Webhooks: endpoints are checked and owned by their client; finished requests and budget
alerts are posted signed to a real local receiver, retried with backoff, in order per endpoint,
and survive a restart; KAM replicas on PostgreSQL never post one delivery twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import requests_pb2, webhooks_pb2, webhooks_pb2_grpc
from bitware_core.auth import Principal
from bitware_core.config import KamSettings, QueueSettings, Settings, WebhookSettings
from bitware_core.db import Database, utcnow
from bitware_mesh.inprocess import InProcessMesh, start_mesh
from kam_server import delivery, models, webhooks
from kam_server.delivery import Deliverer, prune
from tests.common import PARKED_CAPABILITY, Client, make_client, scratch_database
from tests.kam.helpers import Kam, fails, kam, parked_template, reason, violated_fields
from tests.webhook_receiver import receiver

RETRY_BASE = 0.4


@pytest.fixture
async def hooked(tmp_path: Path) -> AsyncIterator[InProcessMesh]:
    """A mesh whose KAM accepts http://127.0.0.1 webhooks and retries after RETRY_BASE s."""
    running = await start_mesh(
        tmp_path,
        Settings(
            queue=QueueSettings(heartbeat_interval=0.5),
            kam=KamSettings(extra_capabilities=PARKED_CAPABILITY),
            webhooks=WebhookSettings(allow_insecure=True, retry_base=RETRY_BASE),
        ),
    )
    try:
        yield running
    finally:
        await running.stop()


def stub(k: Kam) -> webhooks_pb2_grpc.WebhookServiceStub:
    return webhooks_pb2_grpc.WebhookServiceStub(k.channel)


async def register(k: Kam, client: Client, url: str) -> webhooks_pb2.CreateWebhookEndpointResponse:
    response: webhooks_pb2.CreateWebhookEndpointResponse = await stub(k).CreateWebhookEndpoint(
        webhooks_pb2.CreateWebhookEndpointRequest(url=url, description="tests"),
        metadata=client.key,
        timeout=10,
    )
    return response


async def finish(
    k: Kam, client: Client, status: int = requests_pb2.REQUEST_STATUS_COMPLETED, cost: float = 0.1
) -> str:
    """Creates and executes a request, then reports its outcome as the orchestrator would."""
    request = await k.create_request(client.key, "hooked")
    execution_id = await k.execute(client.key, request.request_id)
    await k.requests.RecordExecutionOutcome(
        requests_pb2.RecordExecutionOutcomeRequest(
            request_id=request.request_id,
            execution_id=execution_id,
            status=status,
            usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=5, cost_usd=cost),
            job_id="job_1" if status == requests_pb2.REQUEST_STATUS_COMPLETED else "",
            error_message="" if status == requests_pb2.REQUEST_STATUS_COMPLETED else "boom",
        ),
        metadata=client.worker("orchestrator"),
        timeout=10,
    )
    return request.request_id


async def deliveries(
    k: Kam, client: Client, endpoint_id: str
) -> list[webhooks_pb2.WebhookDelivery]:
    response = await stub(k).ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id),
        metadata=client.key,
        timeout=10,
    )
    return list(response.deliveries)


async def settled(
    k: Kam, client: Client, endpoint_id: str, count: int
) -> list[webhooks_pb2.WebhookDelivery]:
    """The endpoint's deliveries, oldest first, once `count` of them are no longer pending."""
    for _ in range(600):
        found = await deliveries(k, client, endpoint_id)
        done = [d for d in found if d.status != webhooks_pb2.DELIVERY_STATUS_PENDING]
        if len(done) >= count:
            return found[::-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries did not settle: {found}")


async def test_a_finished_request_is_posted_signed_with_its_event_id(hooked: InProcessMesh) -> None:
    client = await make_client(hooked)
    with receiver() as hook:
        async with kam(hooked) as k:
            await k.create_template(client.admin, parked_template("hooked"))
            created = await register(k, client, hook.url)
            secret = created.signing_secret
            assert secret.startswith("whsec_") and len(secret) > 40
            request_id = await finish(k, client)

            (post,) = await hook.wait_for(1)
            assert post.signature_ok(secret)
            assert not post.signature_ok(secret + "x")
            event = post.event
            assert post.headers["bitware-event-id"] == event["id"]
            assert post.headers["content-type"] == "application/json"
            assert event["type"] == "request.completed"
            assert event["client_id"] == client.client_id
            assert event["data"]["request"]["request_id"] == request_id
            assert event["data"]["request"]["job_id"] == "job_1"
            assert event["data"]["request"]["cost_usd"] == pytest.approx(0.1)

            (delivery,) = await settled(k, client, created.endpoint.endpoint_id, 1)
            assert delivery.status == webhooks_pb2.DELIVERY_STATUS_SUCCEEDED
            assert delivery.attempts == 1 and delivery.last_http_status == 200
            assert delivery.event_id == event["id"] and delivery.payload == post.body.decode()
            assert not delivery.HasField("next_attempt_time")


async def test_failed_posts_are_retried_with_backoff_and_events_stay_in_order(
    hooked: InProcessMesh,
) -> None:
    client = await make_client(hooked)
    with receiver(statuses=[500, 503, 500]) as hook:
        async with kam(hooked) as k:
            await k.create_template(client.admin, parked_template("hooked"))
            created = await register(k, client, hook.url)
            first = await finish(k, client)
            second = await finish(k, client, requests_pb2.REQUEST_STATUS_FAILED)
            # A cancel is a third event, queued behind the two.
            third = await k.create_request(client.key, "hooked")
            await k.execute(client.key, third.request_id)
            await k.requests.CancelRequest(
                requests_pb2.CancelRequestRequest(request_id=third.request_id),
                metadata=client.key,
                timeout=10,
            )

            posts = await hook.wait_for(6)
            events = [(p.event["type"], p.event["data"]["request"]["request_id"]) for p in posts]
            assert events == [
                ("request.completed", first),
                ("request.completed", first),
                ("request.completed", first),
                ("request.completed", first),
                ("request.failed", second),
                ("request.cancelled", third.request_id),
            ]
            # The same event (and id) each time, signed afresh.
            assert len({p.headers["bitware-event-id"] for p in posts[:4]}) == 1
            assert all(p.signature_ok(created.signing_secret) for p in posts)
            # Waits double: RETRY_BASE, then 2×, then 4× (lower bounds: the machine may be slow).
            gaps = [posts[n + 1].at - posts[n].at for n in range(3)]
            for gap, least in zip(gaps, (1, 2, 4), strict=True):
                assert gap >= RETRY_BASE * least * 0.9, gaps

            log = await settled(k, client, created.endpoint.endpoint_id, 3)
            assert [d.attempts for d in log] == [4, 1, 1]
            assert all(d.status == webhooks_pb2.DELIVERY_STATUS_SUCCEEDED for d in log)
            assert log[0].last_http_status == 200 and log[0].last_error == ""


async def test_crossing_a_budget_alert_is_posted_after_the_request_that_crossed_it(
    hooked: InProcessMesh,
) -> None:
    client = await make_client(hooked, budget=1.0)
    with receiver() as hook, receiver() as alerts_only:
        async with kam(hooked) as k:
            await k.create_template(client.admin, parked_template("hooked"))
            await register(k, client, hook.url)
            await stub(k).CreateWebhookEndpoint(
                webhooks_pb2.CreateWebhookEndpointRequest(
                    url=alerts_only.url, event_types=["budget.threshold"]
                ),
                metadata=client.key,
                timeout=10,
            )
            await finish(k, client, cost=0.85)
            completed, alert = await hook.wait_for(2)
            assert completed.event["type"] == "request.completed"
            assert alert.event["type"] == "budget.threshold"
            assert alert.event["data"]["percent"] == "80"
            assert alert.event["data"]["monthly_budget_usd"] == "1.00"
            # The endpoint that asked only for alerts gets only the alert, same event id.
            (only,) = await alerts_only.wait_for(1)
            assert only.event["type"] == "budget.threshold"
            assert only.event["id"] == alert.event["id"]


async def test_endpoint_urls_are_checked_and_endpoints_belong_to_their_client(
    client: Client,
) -> None:
    other = await make_client(client.mesh)
    async with kam(client.mesh) as k:
        hooks = stub(k)
        for url in (
            "http://127.0.0.1:9/hook",  # insecure webhooks are not allowed on this KAM
            "http://example.com/hook",
            "https://10.1.2.3/hook",
            "https://[::1]/hook",
            "https://user:pw@example.com/hook",
            "ftp://example.com/",
            "not a url",
        ):
            error = await fails(
                hooks.CreateWebhookEndpoint(
                    webhooks_pb2.CreateWebhookEndpointRequest(url=url),
                    metadata=client.key,
                    timeout=10,
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert violated_fields(error) == {"url"}, url
        error = await fails(
            hooks.CreateWebhookEndpoint(
                webhooks_pb2.CreateWebhookEndpointRequest(
                    url="https://example.com/hook", event_types=["request.exploded"]
                ),
                metadata=client.key,
                timeout=10,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"event_types[0]"}

        created = await register(k, client, "https://hooks.example.com/bitware")
        endpoint_id = created.endpoint.endpoint_id
        listed = await hooks.ListWebhookEndpoints(
            webhooks_pb2.ListWebhookEndpointsRequest(), metadata=client.key, timeout=10
        )
        assert [e.endpoint_id for e in listed.endpoints] == [endpoint_id]
        assert created.signing_secret not in str(listed)

        # Another client neither sees nor deletes it.
        await fails(
            hooks.ListWebhookDeliveries(
                webhooks_pb2.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id),
                metadata=other.key,
                timeout=10,
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        await fails(
            hooks.DeleteWebhookEndpoint(
                webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                metadata=other.key,
                timeout=10,
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        theirs = await hooks.ListWebhookEndpoints(
            webhooks_pb2.ListWebhookEndpointsRequest(), metadata=other.key, timeout=10
        )
        assert not theirs.endpoints

        for _ in range(webhooks.MAX_ENDPOINTS - 1):
            await register(k, client, "https://hooks.example.com/more")
        error = await fails(
            register(k, client, "https://hooks.example.com/too-many"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert reason(error) == "WEBHOOK_LIMIT"

        await hooks.DeleteWebhookEndpoint(
            webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
            metadata=client.key,
            timeout=10,
        )
        await fails(
            hooks.DeleteWebhookEndpoint(
                webhooks_pb2.DeleteWebhookEndpointRequest(endpoint_id=endpoint_id),
                metadata=client.key,
                timeout=10,
            ),
            grpc.StatusCode.NOT_FOUND,
        )


async def _queue(
    db: Database, client_id: str, url: str, key: webhooks.WebhookKey, events: int
) -> str:
    """A client with one endpoint and `events` queued events, written as KAM would."""

    def setup(session: object) -> str:
        from sqlalchemy.orm import Session

        assert isinstance(session, Session)
        session.add(
            models.Client(
                id=client_id,
                company_name="Acme",
                contact_email="ops@acme.test",
                tier="standard",
                monthly_budget_usd=10.0,
            )
        )
        session.flush()
        endpoint = models.WebhookEndpoint(
            id=f"whe_{client_id}", client_id=client_id, url=url, event_types=[], key_id=key.id
        )
        session.add(endpoint)
        return endpoint.id

    endpoint_id = await db.run(setup)
    for index in range(events):
        await db.run_tx(
            lambda tx, i=index: webhooks.enqueue(tx, client_id, "budget.threshold", {"n": str(i)})
        )
    return endpoint_id


def _migrated(url: str) -> Database:
    db = Database(url)
    db.migrate("kam", str(Path(models.__file__).parent / "migrations"), models.KamBase.metadata)
    return db


async def test_a_restart_loses_no_delivery(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kam.db'}"
    key = webhooks.WebhookKey.load(tmp_path / "webhook.key")
    with receiver(statuses=[500]) as hook:
        db = _migrated(url)
        await _queue(db, "cli_a", hook.url, key, 2)
        before = Deliverer(db, key, retry_base=2.0)
        before.start()
        await hook.wait_for(1)  # the first attempt failed; the retry is due in 2 s
        await before.stop()
        db.close()

        # "KAM restarted": a new process, a new key object read from the same file.
        again = _migrated(url)
        after = Deliverer(again, webhooks.WebhookKey.load(tmp_path / "webhook.key"), 2.0)
        after.start()
        try:
            posts = await hook.wait_for(3)
        finally:
            await after.stop()
            again.close()
    assert [p.event["data"]["n"] for p in posts] == ["0", "0", "1"]


async def test_replicas_on_postgres_post_each_delivery_once_and_in_order(tmp_path: Path) -> None:
    key = webhooks.WebhookKey.load(tmp_path / "webhook.key")
    events = 15
    with scratch_database("bitware_hooks") as plain, receiver() as hook:
        url = plain.replace("postgresql://", "postgresql+psycopg://", 1)
        dbs = [_migrated(url), Database(url)]
        endpoints = [await _queue(dbs[0], f"cli_{n}", hook.url, key, events) for n in range(2)]
        replicas = [Deliverer(db, key, retry_base=1.0) for db in dbs]
        for replica in replicas:
            replica.start()
        try:
            posts = await hook.wait_for(2 * events)
            await asyncio.sleep(1.5)  # any duplicate would arrive meanwhile
        finally:
            for replica in replicas:
                await replica.stop()
            for db in dbs:
                db.close()
    ids = [p.headers["bitware-event-id"] for p in hook.received]
    assert len(ids) == len(set(ids)) == 2 * events
    for endpoint_id in endpoints:
        client_id = endpoint_id.removeprefix("whe_")
        mine = [p.event["data"]["n"] for p in posts if p.event["client_id"] == client_id]
        assert mine == [str(n) for n in range(events)]


async def test_the_webhook_key_is_made_once_private_and_a_changed_key_is_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "webhook.key"
    key = webhooks.WebhookKey.load(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert webhooks.WebhookKey.load(path).id == key.id  # read, not made again
    assert key.secret_for("whe_a") == webhooks.WebhookKey.load(path).secret_for("whe_a")
    assert key.secret_for("whe_a") != key.secret_for("whe_b")
    path.write_text("too short\n")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        webhooks.WebhookKey.load(path)

    # Endpoints made under another key are not signed with a secret their receiver lacks.
    other = webhooks.WebhookKey.load(tmp_path / "other.key")
    with receiver() as hook:
        db = _migrated(f"sqlite:///{tmp_path / 'kam.db'}")
        endpoint_id = await _queue(db, "cli_k", hook.url, other, 1)
        deliverer = Deliverer(db, key, retry_base=60.0)
        deliverer.start()
        try:
            for _ in range(200):
                rows = await db.run(
                    lambda s: list(
                        s.scalars(
                            select(models.WebhookDelivery).where(
                                models.WebhookDelivery.endpoint_id == endpoint_id
                            )
                        )
                    )
                )
                if rows[0].attempts:
                    break
                await asyncio.sleep(0.05)
        finally:
            await deliverer.stop()
            db.close()
    assert hook.received == []
    assert rows[0].status == "pending" and "BITWARE_WEBHOOK_KEY_FILE" in rows[0].last_error


async def test_a_post_in_flight_when_its_endpoint_is_deleted_does_not_revive_it(
    tmp_path: Path,
) -> None:
    db = _migrated(f"sqlite:///{tmp_path / 'kam.db'}")
    key = webhooks.WebhookKey.load(tmp_path / "webhook.key")
    endpoint_id = await _queue(db, "cli_d", "https://hooks.example.com/x", key, 1)
    [in_flight] = await db.run_tx(lambda tx: delivery.claim(tx, utcnow()))
    admin = Principal(kind="user", user_id="usr_admin", role="admin")
    await db.run(lambda s: webhooks.delete_endpoint(s, admin, endpoint_id))
    # The post fails and would be retried: the deletion has given it up, and it stays so.
    status = await db.run_tx(
        lambda tx: delivery.settle(tx, in_flight, 500, "HTTP 500", 1.0, utcnow())
    )
    assert status == "pending"  # what the post alone would have made of it
    rows = await db.run(lambda s: list(s.scalars(select(models.WebhookDelivery))))
    again = await db.run_tx(lambda tx: delivery.claim(tx, utcnow()))
    db.close()
    assert [(d.status, d.last_error) for d in rows] == [("failed", "the endpoint was deleted")]
    assert again == []


async def test_finished_deliveries_leave_the_log_after_30_days(tmp_path: Path) -> None:
    db = _migrated(f"sqlite:///{tmp_path / 'kam.db'}")
    key = webhooks.WebhookKey.load(tmp_path / "webhook.key")
    await _queue(db, "cli_p", "https://hooks.example.com/x", key, 3)

    def age(session: object) -> None:
        from sqlalchemy.orm import Session

        assert isinstance(session, Session)
        old, older, pending = session.scalars(
            select(models.WebhookDelivery).order_by(models.WebhookDelivery.seq)
        )
        long_ago = utcnow() - timedelta(days=31)
        old.status, old.created_at = "succeeded", long_ago
        older.status, older.created_at = "failed", long_ago
        pending.created_at = long_ago  # still owed: kept

    await db.run(age)
    assert await db.run_tx(lambda tx: prune(tx, utcnow())) == 2
    left = await db.run(lambda s: list(s.scalars(select(models.WebhookDelivery.status))))
    db.close()
    assert left == ["pending"]


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("short.key", "kam: BITWARE_WEBHOOK_KEY_FILE: {path} must hold at least 32 bytes as hex"),
        (
            "no-such-folder/webhook.key",
            "kam: BITWARE_WEBHOOK_KEY_FILE={path}: cannot read or create it: "
            "No such file or directory",
        ),
    ],
)
def test_a_webhook_key_file_kam_cannot_use_is_one_line_and_exit_2(
    tmp_path: Path, name: str, line: str
) -> None:
    path = tmp_path / name
    if name == "short.key":
        path.write_text("too short\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BITWARE_")}
    result = subprocess.run(
        [sys.executable, "-m", "kam_server"],
        env={**environ, "BITWARE_DATA_DIR": str(tmp_path), "BITWARE_WEBHOOK_KEY_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(line.format(path=path)), result.stderr
    assert "Traceback" not in result.stderr
