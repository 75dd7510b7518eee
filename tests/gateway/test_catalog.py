"""Templates, jobs and structure trees, and the admin routes for clients and keys."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from bitware_core.config import OpenAISettings, QueueSettings, Settings
from bitware_mesh.inprocess import start_mesh
from granulator_server.domain import generate_offline
from tests.common import Client, make_client
from tests.gateway.conftest import (
    admin,
    closed_address,
    create_and_execute,
    gateway_client,
    gateway_settings,
    key,
)
from tests.granulator.fake_openai import FakeOpenAI, reply
from tests.granulator.test_model_calls import QUIZ, run_quiz


async def _job_of(http: httpx.AsyncClient, client: Client, execution_id: str) -> str:
    for _ in range(100):
        execution = (await http.get(f"/api/executions/{execution_id}", headers=key(client))).json()
        if execution["execution"]["status"] == "EXECUTION_STATUS_SUCCEEDED":
            return str(execution["execution"]["job_id"])
        await asyncio.sleep(0.1)
    raise AssertionError("the execution did not succeed")


async def test_job_structure_is_returned_and_downloadable(
    http: httpx.AsyncClient, client: Client
) -> None:
    _, execution_id = await create_and_execute(http, client)
    job_id = await _job_of(http, client, execution_id)

    job = await http.get(f"/api/jobs/{job_id}", headers=key(client))
    assert job.status_code == 200 and job.json()["job"]["status"] == "JOB_STATUS_COMPLETED"
    jobs = await http.get("/api/jobs", params={"execution_id": execution_id}, headers=key(client))
    assert job_id in [j["job_id"] for j in jobs.json()["jobs"]]

    structure = await http.get(f"/api/jobs/{job_id}/structure", headers=key(client))
    assert structure.status_code == 200
    assert "content-disposition" not in structure.headers
    elements = structure.json()["elements"]
    assert elements[0]["kind"] == "course" and elements[0]["parent_id"] == ""

    download = await http.get(
        f"/api/jobs/{job_id}/structure", params={"download": 1}, headers=key(client)
    )
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert download.headers["content-disposition"] == (
        f'attachment; filename="structure-{job_id}.json"'
    )
    assert json.loads(download.content) == structure.json()


async def test_jobs_are_read_from_whichever_granulator_answers(
    http: httpx.AsyncClient, client: Client
) -> None:
    _, execution_id = await create_and_execute(http, client)
    job_id = await _job_of(http, client, execution_id)
    # Two granulators that are down, in front of the one that serves.
    down = f"{closed_address()}, {closed_address()}"
    serving = client.mesh.granulators[0].address
    settings = gateway_settings(client.mesh, granulator_address=f"{down},{serving}")
    async with gateway_client(settings) as gateway:
        for _ in range(6):  # every turn of the round robin
            answer = await gateway.get(f"/api/jobs/{job_id}/structure", headers=key(client))
            assert answer.status_code == 200, answer.text
        health = (await gateway.get("/healthz")).json()
        assert health["upstreams"]["granulator"] == "ok"
    settings = gateway_settings(client.mesh, granulator_address=down)
    async with gateway_client(settings) as gateway:
        answer = await gateway.get(f"/api/jobs/{job_id}", headers=key(client))
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "UNAVAILABLE"


async def test_unknown_job_is_404(http: httpx.AsyncClient, client: Client) -> None:
    answer = await http.get("/api/jobs/job_nope/structure", headers=key(client))
    assert answer.status_code == 404


async def test_master_and_structure_templates_are_readable(
    http: httpx.AsyncClient, client: Client
) -> None:
    masters = await http.get("/api/master-templates", headers=key(client))
    assert masters.status_code == 200
    names = [t["name"] for t in masters.json()["templates"]]
    assert names
    one = await http.get(f"/api/master-templates/{names[0]}", headers=key(client))
    assert one.json()["template"]["name"] == names[0]
    assert (await http.get("/api/master-templates/nope", headers=key(client))).status_code == 404

    structures = await http.get(
        "/api/structure-templates", params={"structure_type": "course"}, headers=key(client)
    )
    assert structures.status_code == 200
    assert {t["structure_type"] for t in structures.json()["templates"]} == {
        "STRUCTURE_TYPE_COURSE"
    }
    match = await http.get("/api/structure-templates/course", headers=key(client))
    assert match.status_code == 200
    assert match.json()["template"]["structure_type"] == "STRUCTURE_TYPE_COURSE"


async def test_admin_creates_a_client_and_a_key_and_revokes_it(
    http: httpx.AsyncClient, client: Client
) -> None:
    created = await http.post(
        "/api/clients",
        json={"company_name": "Globex", "contact_email": "it@globex.test", "tier": "basic"},
        headers=admin(client),
    )
    assert created.status_code == 200, created.text
    new = created.json()["client"]
    assert new["tier"] == "TIER_BASIC"
    got = await http.get(f"/api/clients/{new['client_id']}", headers=admin(client))
    assert got.json()["client"]["company_name"] == "Globex"

    made = await http.post(
        f"/api/clients/{new['client_id']}/api-keys", json={"name": "ci"}, headers=admin(client)
    )
    assert made.status_code == 200, made.text
    secret, key_id = made.json()["key"], made.json()["api_key"]["api_key_id"]
    me = await http.get("/api/auth/me", headers={"X-API-Key": secret})
    assert me.json()["principal"]["client_id"] == new["client_id"]

    revoked = await http.delete(f"/api/api-keys/{key_id}", headers=admin(client))
    assert revoked.status_code == 200 and revoked.json()["api_key"]["revoked"] is True
    assert (await http.get("/api/auth/me", headers={"X-API-Key": secret})).status_code == 401


async def test_an_api_key_is_made_with_scopes_and_an_expiry(
    http: httpx.AsyncClient, client: Client
) -> None:
    made = await http.post(
        f"/api/clients/{client.client_id}/api-keys",
        json={"name": "reader", "scopes": ["read"], "expire_time": "2099-12-31T23:59:59+02:00"},
        headers=admin(client),
    )
    assert made.status_code == 200, made.text
    record = made.json()["api_key"]
    assert record["scopes"] == ["read"] and record["expire_time"] == "2099-12-31T21:59:59Z"
    reader = {"X-API-Key": made.json()["key"]}
    assert (await http.get("/api/requests", headers=reader)).status_code == 200
    refused = await http.post(
        "/api/requests", json={"topic": "Go", "structure_type": "course"}, headers=reader
    )
    assert refused.status_code == 403, refused.text
    assert "read" in refused.text and "write" in refused.text

    past = await http.post(
        f"/api/clients/{client.client_id}/api-keys",
        json={"name": "late", "expire_time": "2001-01-01T00:00:00Z", "scopes": ["admin"]},
        headers=admin(client),
    )
    assert past.status_code == 400, past.text
    assert "expire_time" in past.text and "scopes[0]" in past.text


async def test_a_client_cannot_read_another_client(http: httpx.AsyncClient, client: Client) -> None:
    created = await http.post(
        "/api/clients",
        json={"company_name": "Initech", "contact_email": "a@initech.test", "tier": "basic"},
        headers=admin(client),
    )
    other = created.json()["client"]["client_id"]
    assert (await http.get(f"/api/clients/{other}", headers=key(client))).status_code == 404
    own = await http.get(f"/api/clients/{client.client_id}", headers=key(client))
    assert own.status_code == 200


async def test_admin_lists_clients_keys_and_users_and_creates_a_user(
    http: httpx.AsyncClient, client: Client
) -> None:
    clients = await http.get("/api/clients", params={"tier": "standard"}, headers=admin(client))
    assert clients.status_code == 200, clients.text
    assert client.client_id in [c["client_id"] for c in clients.json()["clients"]]

    keys = await http.get(f"/api/clients/{client.client_id}/api-keys", headers=admin(client))
    assert keys.status_code == 200, keys.text
    assert [k["name"] for k in keys.json()["api_keys"]] == ["tests"]
    assert "key" not in keys.json()["api_keys"][0]  # never the secret

    created = await http.post(
        "/api/users",
        json={
            "email": "dana@acme.test",
            "password": "a-long-enough-password",
            "display_name": "Dana",
            "role": "client",
            "client_id": client.client_id,
        },
        headers=admin(client),
    )
    assert created.status_code == 200, created.text
    assert created.json()["user"]["role"] == "ROLE_CLIENT"
    again = await http.post(
        "/api/users",
        json={"email": "dana@acme.test", "password": "another-long-password", "role": "support"},
        headers=admin(client),
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ALREADY_EXISTS"

    users = await http.get("/api/users", headers=admin(client))
    assert "dana@acme.test" in [u["email"] for u in users.json()["users"]]
    login = await http.post(
        "/api/auth/login", json={"email": "dana@acme.test", "password": "a-long-enough-password"}
    )
    assert login.json()["principal"]["client_id"] == client.client_id


async def test_model_calls_are_listed_per_job_and_execution_for_their_client_only(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    settings = Settings(
        queue=QueueSettings(heartbeat_interval=0.5),
        openai=OpenAISettings(base_url=fake_openai.base_url, api_key="sk-test", timeout=5.0),
    )
    fake_openai.add(reply(generate_offline(QUIZ, "Rust", "", 2, {}), prompt_tokens=700))
    mesh = await start_mesh(tmp_path, base=settings)
    try:
        client, other = await make_client(mesh), await make_client(mesh)
        execution = await run_quiz(client)
        async with gateway_client(gateway_settings(mesh)) as http:
            by_job = await http.get(f"/api/jobs/{execution.job_id}/calls", headers=key(client))
            assert by_job.status_code == 200, by_job.text
            [call] = by_job.json()["calls"]
            assert (call["why"], call["prompt_tokens"]) == ("first", "700")
            assert call["messages"][0]["role"] == "system" and "Rust" in call["reply"]
            by_execution = await http.get(
                f"/api/executions/{execution.execution_id}/calls", headers=key(client)
            )
            assert by_execution.json() == by_job.json()

            for path in (
                f"/api/jobs/{execution.job_id}/calls",
                f"/api/executions/{execution.execution_id}/calls",
            ):
                foreign = await http.get(path, headers=key(other))
                assert foreign.status_code == 404, foreign.text
            bad = await http.get(
                f"/api/jobs/{execution.job_id}/calls",
                params={"page_token": "nonsense"},
                headers=key(client),
            )
            assert bad.status_code == 400
            assert bad.json()["error"]["field_violations"][0]["field"] == "page_token"
    finally:
        await mesh.stop()
