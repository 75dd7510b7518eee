"""`requests.execute`, `retry` and `cancel`, KAM's steps with the orchestrator, on a real SQLite
file without a server: the orchestrator is another process, so here it is a stand-in that
answers or fails as told. What a failure leaves behind is the point: the request as it was and
nothing reserved."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitware_core.auth import Principal
from bitware_core.db import Database
from bitware_core.domain import Usage
from bitware_core.errors import Unavailable
from kam_server import accounts, catalog, models, requests

ADMIN = Principal(kind="user", role="admin")


class Orchestrator:
    """Answers as the orchestrator would, or fails with UNAVAILABLE while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[str] = []

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise Unavailable("the orchestrator is unreachable")

    async def execute(self, row: models.ClientRequest, tier: str) -> str:
        self._call(f"execute {row.id} {tier}")
        return "exe_1"

    async def retry(self, execution_id: str, retry_number: int) -> None:
        self._call(f"retry {execution_id} {retry_number}")

    async def cancel(self, execution_id: str) -> None:
        self._call(f"cancel {execution_id}")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'kam.db'}")
    database.migrate(
        "kam", str(Path(models.__file__).parent / "migrations"), models.KamBase.metadata
    )
    database.run_sync(catalog.seed)
    return database


def new_request(db: Database) -> str:
    fields = accounts.ClientFields(
        company_name="Acme", contact_email="ops@acme.test", tier="standard", monthly_budget_usd=50
    )
    client = db.run_sync(lambda s: accounts.create_client(s, ADMIN, fields))
    new = requests.NewRequest(
        topic="Queues",
        structure_type="course",
        audience="",
        granularity=2,
        constraints={},
        options={},
        master_template="",
        urgency="normal",
        idempotency_key="",
        client_id=client.id,
    )
    return db.run_tx_sync(lambda tx: requests.create(tx, ADMIN, new)).id


def read(db: Database, request_id: str) -> models.ClientRequest:
    return db.run_sync(lambda s: requests.get(s, ADMIN, request_id))


async def test_a_request_the_orchestrator_did_not_start_is_pending_again_with_nothing_reserved(
    db: Database,
) -> None:
    request_id = new_request(db)
    orchestrator = Orchestrator()
    orchestrator.down = True

    with pytest.raises(Unavailable):
        await requests.execute(db, orchestrator, ADMIN, request_id)
    row = read(db, request_id)
    assert (row.status, row.execution_id, row.reserved_usd) == ("pending", "", 0)

    orchestrator.down = False
    row = await requests.execute(db, orchestrator, ADMIN, request_id)
    assert (row.status, row.execution_id) == ("running", "exe_1") and row.reserved_usd > 0
    # Executing again returns the same execution and starts nothing.
    again = await requests.execute(db, orchestrator, ADMIN, request_id)
    assert again.execution_id == "exe_1"
    assert [call.split()[0] for call in orchestrator.calls] == ["execute", "execute"]


async def test_a_retry_the_orchestrator_did_not_run_leaves_the_request_failed_as_before(
    db: Database,
) -> None:
    request_id = new_request(db)
    orchestrator = Orchestrator()
    await requests.execute(db, orchestrator, ADMIN, request_id)
    db.run_tx_sync(
        lambda tx: requests.record_outcome(
            tx,
            request_id,
            "exe_1",
            status="failed",
            usage=Usage(),
            job_id="",
            error_message="stage failed",
        )
    )
    orchestrator.down = True

    with pytest.raises(Unavailable):
        await requests.retry(db, orchestrator, ADMIN, request_id)
    row = read(db, request_id)
    assert (row.status, row.retries, row.reserved_usd) == ("failed", 0, 0)

    orchestrator.down = False
    row = await requests.retry(db, orchestrator, ADMIN, request_id)
    assert (row.status, row.retries) == ("running", 1)
    assert orchestrator.calls[-1] == "retry exe_1 1"


async def test_a_request_is_cancelled_only_once_its_execution_is(db: Database) -> None:
    request_id = new_request(db)
    orchestrator = Orchestrator()
    await requests.execute(db, orchestrator, ADMIN, request_id)
    orchestrator.down = True

    with pytest.raises(Unavailable):
        await requests.cancel(db, orchestrator, ADMIN, request_id)
    assert read(db, request_id).status == "running"  # nothing changed: the caller tries again

    orchestrator.down = False
    row = await requests.cancel(db, orchestrator, ADMIN, request_id)
    assert (row.status, row.reserved_usd) == ("cancelled", 0)
    assert orchestrator.calls[-1] == "cancel exe_1"
