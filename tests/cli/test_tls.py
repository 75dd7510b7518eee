"""A `bitware up` over mutual TLS (BITWARE_TLS_CERT/KEY/CA): the gateway serves HTTPS, and every
command reaches the mesh with --tls-ca/--tls-cert/--tls-key and only with them."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import bitware, kill_leftovers, one_line_error, start_up
from tests.tls_certs import make_pki


def test_commands_reach_a_tls_mesh_with_the_tls_flags(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    env = {
        "BITWARE_TLS_CERT": str(pki.cert),
        "BITWARE_TLS_KEY": str(pki.key),
        "BITWARE_TLS_CA": str(pki.ca),
    }
    up = start_up(tmp_path / "data", env=env)
    try:
        assert up.wait_for(r"^dashboard\s+(\S+)").group(1).startswith("https://")
        data = ("--data", str(up.data))
        tls = ("--tls-ca", str(pki.ca), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
        admin = {"BITWARE_ADMIN_PASSWORD": up.admin_password}

        # Health checks have a 3 s deadline each, and TLS handshakes on a loaded machine can take
        # a while: allow a few tries.
        for _ in range(5):
            status = bitware("status", *data, *tls)
            if status.returncode == 0:
                break
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" serving ") == 4, status.stdout  # the gateway over HTTPS
        listed = bitware("templates", "list", *data, *tls, **admin)
        assert listed.returncode == 0, listed.stderr
        assert "course_standard" in listed.stdout
        workers = bitware("workers", *data, *tls, "--json", **admin)
        assert workers.returncode == 0, workers.stderr
        credentials = bitware("credentials", "list", *data, *tls, "--json", **admin)
        assert credentials.returncode == 0, credentials.stderr
        demo = bitware(
            "demo",
            "--kam",
            up.address("kam"),
            "--orchestrator",
            up.address("orchestrator"),
            "--granulator",
            up.address("granulator-1"),
            *tls,
            **admin,
        )
        assert demo.returncode == 0, demo.stderr
        gateway = up.address("gateway")
        assert bitware("health", gateway, "--http", "--tls-ca", str(pki.ca)).returncode == 0

        # Plaintext, or TLS without the client certificate the servers require, gets nowhere.
        plain = bitware("templates", "list", *data, **admin)
        assert one_line_error(plain).startswith("bitware: UNAVAILABLE: ")
        half = bitware("templates", "list", *data, "--tls-ca", str(pki.ca), **admin)
        assert one_line_error(half).startswith("bitware: UNAVAILABLE: ")
        lone = bitware("queue", *data, "--tls-cert", str(pki.cert), **admin)
        assert one_line_error(lone) == "bitware: --tls-cert and --tls-key go together"
    finally:
        if up.stop() != 0:
            kill_leftovers(up)
