"""Sign in, who am I, sign out: the session cookie and the session header."""

from __future__ import annotations

import httpx

from tests.common import Client
from tests.gateway.conftest import key


async def test_login_sets_an_httponly_cookie_that_me_and_logout_use(
    http: httpx.AsyncClient, client: Client
) -> None:
    credentials = client.mesh.credentials
    login = await http.post(
        "/api/auth/login",
        json={"email": credentials.admin_email, "password": credentials.admin_password},
    )
    assert login.status_code == 200, login.text
    body = login.json()
    assert body["session_token"].startswith("bws_")
    assert body["principal"]["role"] == "ROLE_ADMIN"
    cookie = login.headers["set-cookie"]
    assert cookie.startswith("bitware_session=") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()

    me = await http.get("/api/auth/me")  # the cookie alone
    assert me.status_code == 200, me.text
    assert me.json()["principal"]["kind"] == "PRINCIPAL_KIND_USER"
    assert me.json()["principal"]["display_name"] == credentials.admin_email

    logout = await http.post("/api/auth/logout")
    assert logout.status_code == 200, logout.text
    assert 'bitware_session=""' in logout.headers["set-cookie"]
    assert (await http.get("/api/auth/me")).status_code == 401
    revoked = await http.get(
        "/api/auth/me", headers={"x-bitware-session-token": body["session_token"]}
    )
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "UNAUTHENTICATED"


async def test_me_with_an_api_key_names_its_client(http: httpx.AsyncClient, client: Client) -> None:
    me = await http.get("/api/auth/me", headers=key(client))
    assert me.status_code == 200
    principal = me.json()["principal"]
    assert principal["kind"] == "PRINCIPAL_KIND_API_KEY"
    assert principal["client_id"] == client.client_id


async def test_wrong_password_is_401_and_sets_no_cookie(
    http: httpx.AsyncClient, client: Client
) -> None:
    login = await http.post(
        "/api/auth/login",
        json={"email": client.mesh.credentials.admin_email, "password": "not-the-password"},
    )
    assert login.status_code == 401
    assert "set-cookie" not in login.headers
    assert login.json()["error"]["code"] == "UNAUTHENTICATED"


async def test_login_without_email_is_400_with_field_violations(
    http: httpx.AsyncClient, client: Client
) -> None:
    login = await http.post("/api/auth/login", json={"email": " ", "password": ""})
    assert login.status_code == 400
    fields = {v["field"] for v in login.json()["error"]["field_violations"]}
    assert fields == {"email", "password"}


async def test_a_header_that_is_not_ascii_is_400_not_a_crash(
    http: httpx.AsyncClient, client: Client
) -> None:
    me = await http.get("/api/auth/me", headers={b"X-API-Key": "bwk_\u00e9t\u00e9".encode()})
    assert me.status_code == 400
    assert me.json()["error"]["field_violations"][0]["field"] == "header X-API-Key"


async def test_repeated_failed_logins_are_429_with_retry_after(
    http: httpx.AsyncClient, client: Client
) -> None:
    wrong = {"email": client.mesh.credentials.admin_email, "password": "not-the-password"}
    statuses = [(await http.post("/api/auth/login", json=wrong)).status_code for _ in range(5)]
    assert statuses == [401] * 5
    throttled = await http.post("/api/auth/login", json=wrong)
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert int(throttled.headers["retry-after"]) > 0
