"""The gateway serves HTTPS with the servers' certificate when BITWARE_TLS_CERT/KEY are set."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from bitware_core.config import TLSSettings
from tests.common import Client
from tests.gateway.conftest import gateway_settings, key, served_gateway
from tests.tls_certs import make_pki


async def test_the_gateway_serves_https_by_config(client: Client, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = gateway_settings(client.mesh, TLSSettings(cert=str(pki.cert), key=str(pki.key)))
    async with served_gateway(settings) as base:
        secure = base.replace("http://", "https://", 1)
        verify = ssl.create_default_context(cafile=str(pki.ca))
        async with httpx.AsyncClient(base_url=secure, verify=verify, timeout=10) as https:
            assert (await https.get("/healthz")).status_code == 200
            listed = await https.get("/api/requests", headers=key(client))
            assert listed.status_code == 200, listed.text
        # A client that does not trust the CA refuses the certificate; plain HTTP is not served.
        async with httpx.AsyncClient(base_url=secure, timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/healthz")
        async with httpx.AsyncClient(base_url=base, timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/healthz")
