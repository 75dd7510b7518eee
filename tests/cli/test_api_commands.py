"""`bitware requests|executions|keys|templates|version|completion` as real subprocesses against a
real `bitware up`: every command's table and its `--json`, and its errors in one line."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import httpx

from tests.cli.conftest import ClientKey, Up, bitware, clean_env, one_line_error


def run_request(up: Up, key: ClientKey, topic: str) -> dict[str, dict[str, object]]:
    result = bitware(
        "run", "--data", str(up.data), "--topic", topic, "--json", BITWARE_API_KEY=key.api_key
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, dict[str, object]] = json.loads(result.stdout)
    return document


def as_client(up: Up, key: ClientKey, *args: str) -> subprocess.CompletedProcess[str]:
    return bitware(*args, "--data", str(up.data), BITWARE_API_KEY=key.api_key)


def as_admin(up: Up, *args: str) -> subprocess.CompletedProcess[str]:
    return bitware(*args, "--data", str(up.data), BITWARE_ADMIN_PASSWORD=up.admin_password)


def pending_request(up: Up, key: ClientKey) -> str:
    """A request created (through the gateway) but never executed."""
    base = f"http://{up.address('gateway')}"
    created = httpx.post(
        f"{base}/api/requests",
        json={"topic": "Pending", "structure_type": "quiz"},
        headers={"X-API-Key": key.api_key},
        timeout=10,
    )
    created.raise_for_status()
    return str(created.json()["request"]["request_id"])


def test_requests_list_show_and_watch(up: Up, client_key: ClientKey) -> None:
    done = run_request(up, client_key, "Listed")
    request_id = str(done["request"]["request_id"])

    listed = as_client(up, client_key, "requests", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["REQUEST", "STATUS", "TYPE"]
    assert any(row.startswith(request_id) and " completed " in row for row in rows), rows
    assert all(line == line.rstrip() for line in listed.stdout.splitlines())

    document = json.loads(as_client(up, client_key, "requests", "list", "--json").stdout)
    assert request_id in [r["request_id"] for r in document["requests"]]
    failed_only = as_client(up, client_key, "requests", "list", "--status", "failed", "--json")
    assert json.loads(failed_only.stdout) == {"requests": []}

    shown = json.loads(as_client(up, client_key, "requests", "show", request_id, "--json").stdout)
    assert shown["status"] == "REQUEST_STATUS_COMPLETED"
    table = as_client(up, client_key, "requests", "show", request_id).stdout
    assert "completed" in table and "Listed" in table

    # A finished execution is watched from its history: progress on stderr, the end on stdout.
    watched = as_client(up, client_key, "requests", "watch", request_id)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.strip() == f"execution {shown['execution_id']} succeeded"
    assert "100%  execution succeeded" in watched.stderr


def test_requests_cancel_and_retry(up: Up, client_key: ClientKey) -> None:
    request_id = pending_request(up, client_key)
    cancelled = as_client(up, client_key, "requests", "cancel", request_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"request {request_id} cancelled"
    # Cancelling twice, or retrying what did not fail, is refused in one line with the reason.
    again = one_line_error(as_client(up, client_key, "requests", "cancel", request_id))
    assert again.startswith("bitware: FAILED_PRECONDITION: ")
    done = run_request(up, client_key, "Not failed")
    retry = as_client(up, client_key, "requests", "retry", str(done["request"]["request_id"]))
    line = one_line_error(retry)
    assert line.startswith("bitware: FAILED_PRECONDITION: ") and "[NOT_FAILED]" in line
    missing = one_line_error(as_client(up, client_key, "requests", "show", "req_nosuch"))
    assert missing.startswith("bitware: NOT_FOUND: ")


def test_executions_list_show_and_events(up: Up, client_key: ClientKey) -> None:
    done = run_request(up, client_key, "Events")
    execution_id = str(done["execution"]["execution_id"])

    listed = as_client(up, client_key, "executions", "list")
    assert listed.stdout.splitlines()[0].split()[:2] == ["EXECUTION", "STATUS"]
    assert execution_id in listed.stdout
    shown = as_client(up, client_key, "executions", "show", execution_id)
    assert shown.stdout.startswith(f"execution {execution_id} succeeded 100%")
    assert "STAGE" in shown.stdout and "granulator-1" in shown.stdout
    assert (
        json.loads(as_client(up, client_key, "executions", "show", execution_id, "--json").stdout)[
            "status"
        ]
        == "EXECUTION_STATUS_SUCCEEDED"
    )

    events = as_client(up, client_key, "executions", "events", execution_id, "--json")
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert [int(e["sequence"]) for e in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["type"] == "EVENT_TYPE_EXECUTION_SUCCEEDED"
    after = as_client(up, client_key, "executions", "events", execution_id, "--after", "2")
    assert after.stdout.splitlines()[0].split()[0] == "3"
    assert len(after.stdout.splitlines()) == len(lines) - 2


def test_keys_create_list_revoke(up: Up, client_key: ClientKey) -> None:
    created = as_admin(up, "keys", "create", "--client", client_key.client_id, "--name", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "shown this once" in created.stderr
    assert (
        as_client(up, ClientKey(client_key.client_id, secret), "requests", "list").returncode == 0
    )

    listed = json.loads(
        as_admin(up, "keys", "list", "--client", client_key.client_id, "--json").stdout
    )
    ours = [k for k in listed["api_keys"] if k["name"] == "ci"]
    assert len(ours) == 1 and secret.startswith(ours[0]["prefix"])
    assert "ci" in as_admin(up, "keys", "list", "--client", client_key.client_id).stdout

    revoked = as_admin(up, "keys", "revoke", ours[0]["api_key_id"])
    assert revoked.stdout.strip() == f"API key {ours[0]['api_key_id']} revoked"
    refused = as_client(up, ClientKey(client_key.client_id, secret), "requests", "list")
    assert one_line_error(refused).startswith("bitware: UNAUTHENTICATED: ")


def test_templates_list_show_create(up: Up, client_key: ClientKey, tmp_path: Path) -> None:
    listed = as_client(up, client_key, "templates", "list")
    assert listed.stdout.splitlines()[0].split()[:2] == ["NAME", "VERSION"]
    assert "course_standard" in listed.stdout
    shown = as_client(up, client_key, "templates", "show", "course_standard")
    assert shown.stdout.startswith("course_standard v1 · course")

    template = json.loads(
        as_client(up, client_key, "templates", "show", "quiz_standard", "--json").stdout
    )
    template["name"] = "quiz_from_cli"
    for ignored in ("version", "create_time", "deprecated"):
        template.pop(ignored, None)
    file = tmp_path / "template.json"
    file.write_text(json.dumps(template))
    stored = as_admin(up, "templates", "create", str(file))
    assert stored.stdout.strip() == "template quiz_from_cli v1 stored", stored.stderr
    assert "quiz_from_cli" in as_client(up, client_key, "templates", "list").stdout
    # A client may not create templates; a file that is no template is refused before any call.
    refused = as_client(up, client_key, "templates", "create", str(file))
    assert one_line_error(refused).startswith("bitware: PERMISSION_DENIED: ")
    file.write_text('{"name": "x", "stagez": []}')
    bad = one_line_error(as_admin(up, "templates", "create", str(file)))
    assert "is not a template" in bad


def test_version_and_completion() -> None:
    for args in (("--version",), ("version",)):
        result = bitware(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("bitware 0.")
    assert set(json.loads(bitware("version", "--json").stdout)) >= {"bitware", "grpcio"}

    script = bitware("completion", "bash").stdout

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (
            f"{script}\nCOMP_WORDS=(bitware {line}); COMP_CWORD={len(words)}; _bitware; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert set(complete("req")) == {"requests"}
    assert set(complete("requests", "")) >= {"list", "show", "watch", "cancel", "retry"}
    assert set(complete("requests", "list", "--st")) == {"--status"}
    assert set(complete("executions", "events", "--")) >= {"--after", "--json", "--tls-ca"}
    assert "bashcompinit" in bitware("completion", "zsh").stdout


def test_tables_are_drawn_on_a_terminal_and_plain_with_no_color(
    up: Up, client_key: ClientKey
) -> None:
    def on_a_terminal(**env: str) -> str:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "bitware_mesh.cli", "queue", "--data", str(up.data)],
            stdout=follower,
            stderr=follower,
            env=clean_env(BITWARE_API_KEY=client_key.api_key, COLUMNS="120", **env),
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0, output
        os.close(leader)
        return output.decode()

    drawn = on_a_terminal()
    assert "\x1b[" in drawn and "PRIORITY" in drawn  # rich's bold header
    plain = on_a_terminal(NO_COLOR="1")
    assert "\x1b[" not in plain and plain.split()[:3] == ["PRIORITY", "WAITING", "OLDEST"]


def test_run_draws_progress_on_the_terminal_and_keeps_stdout_for_the_answer(
    up: Up, client_key: ClientKey
) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bitware_mesh.cli", "run", "--data", str(up.data), "--topic", "Pty"],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env=clean_env(BITWARE_API_KEY=client_key.api_key, COLUMNS="100"),
    )
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    out, _ = process.communicate(timeout=120)
    os.close(leader)
    assert process.returncode == 0, terminal
    drawn = terminal.decode()
    assert "\x1b[" in drawn and "100%" in drawn  # rich's bar, redrawn in place
    assert "[####" not in drawn  # not the one-line-per-event form
    assert "course: Pty" in out and "%" not in out.split("\n", 1)[0]
