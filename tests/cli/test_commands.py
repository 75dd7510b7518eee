"""`bitware run`, `status`, `workers`, `queue` and `demo` as subprocesses against one
`bitware up` mesh, and their error paths: one line on stderr, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.cli.conftest import FREE_PORTS, ClientKey, Up, bitware, one_line_error


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_up_prints_where_each_server_listens_and_the_admin_once(up: Up) -> None:
    for name in ("kam", "orchestrator", "granulator-1", "gateway"):
        assert up.address(name).startswith("127.0.0.1:")
        assert up.pid(name) > 0
    assert up.wait_for(r"^dashboard\s+(http://127\.0\.0\.1:\d+/)$")
    assert len(up.admin_password) >= 16
    mesh = json.loads((up.data / "mesh.json").read_text())
    assert mesh["addresses"]["kam"] == up.address("kam")
    assert up.admin_password not in (up.data / "mesh.json").read_text()


def test_status_reports_every_server_serving(up: Up) -> None:
    result = bitware("status", "--data", str(up.data))
    assert result.returncode == 0, result.stderr
    for name in ("kam", "orchestrator", "granulator-1", "gateway"):
        assert f"{name} " in result.stdout
    assert result.stdout.count("serving") == 4
    # With the admin's password it adds the queue and the workers.
    result = bitware("status", "--data", str(up.data), BITWARE_ADMIN_PASSWORD=up.admin_password)
    assert "workers        1 healthy of 1 registered" in result.stdout
    assert "queue          0 waiting" in result.stdout
    as_json = json.loads(bitware("status", "--data", str(up.data), "--json").stdout)
    assert {s["name"]: s["state"] for s in as_json["servers"]}["gateway"] == "serving"


def test_status_of_an_unreachable_mesh_names_what_is_down(up: Up) -> None:
    kam = closed_address()
    result = bitware("status", "--kam", kam, "--orchestrator", up.address("orchestrator"))
    line = one_line_error(result)
    assert line == "bitware: 1 of 2 servers not serving: kam unreachable"
    assert f"kam            {kam}" in result.stdout
    assert "unreachable" in result.stdout


def test_commands_without_a_mesh_say_how_to_start_one(tmp_path: Path) -> None:
    for command in ("status", "workers", "queue"):
        line = one_line_error(bitware(command, "--data", str(tmp_path)))
        assert "mesh.json does not exist; start one with `bitware up" in line
    line = one_line_error(bitware("run", "--topic", "x", "--data", str(tmp_path)))
    assert "no mesh found" in line


def test_run_watches_progress_then_prints_the_tree(up: Up, client_key: ClientKey) -> None:
    result = bitware(
        "run",
        "--data",
        str(up.data),
        "--topic",
        "AI Development",
        "--type",
        "course",
        "--audience",
        "beginners",
        "--urgency",
        "high",
        BITWARE_API_KEY=client_key.api_key,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("request req_")
    # Progress goes to stderr (one line per event when it is not a terminal), the answer to stdout.
    progress = result.stderr
    assert "[########################] 100%  execution succeeded" in progress
    assert "[------------------------]   0%  execution queued" in progress
    assert "\ncourse: AI Development" in out
    assert "\n  module: " in out
    assert "\n    lesson: " in out
    assert "provider offline" in out


def test_run_json_is_one_document_for_scripts(up: Up, client_key: ClientKey) -> None:
    result = bitware(
        "run",
        "--data",
        str(up.data),
        "--topic",
        "Rust",
        "--type",
        "quiz",
        "--granularity",
        "1",
        "--api-key",
        client_key.api_key,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"request", "execution", "structure"}
    assert document["request"]["status"] == "REQUEST_STATUS_COMPLETED"
    assert document["execution"]["status"] == "EXECUTION_STATUS_SUCCEEDED"
    assert document["execution"]["progress"] == 1.0
    assert document["structure"]["structure_type"] == "STRUCTURE_TYPE_QUIZ"
    assert document["structure"]["elements"][0]["kind"] == "quiz"


def test_run_with_a_bad_api_key_fails_in_one_line(up: Up) -> None:
    result = bitware("run", "--data", str(up.data), "--topic", "x", "--api-key", "bwk_wrong")
    line = one_line_error(result)
    assert line.startswith("bitware: UNAUTHENTICATED: ")
    assert "--api-key" in line
    assert result.stdout == ""


def test_run_without_any_credential_says_which_to_set(up: Up) -> None:
    line = one_line_error(bitware("run", "--data", str(up.data), "--topic", "x"))
    assert "BITWARE_API_KEY" in line and "BITWARE_ADMIN_PASSWORD" in line


def test_run_as_the_admin_needs_the_client(up: Up, client_key: ClientKey) -> None:
    admin = {"BITWARE_ADMIN_PASSWORD": up.admin_password}
    line = one_line_error(bitware("run", "--data", str(up.data), "--topic", "x", **admin))
    assert "--client" in line
    wrong = bitware(
        "run", "--data", str(up.data), "--topic", "x", **{"BITWARE_ADMIN_PASSWORD": "not it"}
    )
    assert one_line_error(wrong).startswith("bitware: sign-in as admin@bitware.local refused")
    result = bitware(
        "run", "--data", str(up.data), "--topic", "Go", "--client", client_key.client_id, **admin
    )
    assert result.returncode == 0, result.stderr
    assert "execution succeeded" in result.stderr


def test_run_against_an_unreachable_mesh_fails_in_one_line(client_key: ClientKey) -> None:
    result = bitware(
        "run",
        "--kam",
        closed_address(),
        "--orchestrator",
        closed_address(),
        "--granulator",
        closed_address(),
        "--topic",
        "x",
        BITWARE_API_KEY=client_key.api_key,
    )
    line = one_line_error(result)
    assert line.startswith("bitware: UNAVAILABLE: ")
    assert "is the mesh running?" in line


def test_workers_shows_state_and_load_to_the_admin(up: Up) -> None:
    result = bitware("workers", "--data", str(up.data), BITWARE_ADMIN_PASSWORD=up.admin_password)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:3] == ["WORKER", "STATE", "LOAD"]
    assert row.split()[:2] == ["granulator-1", "healthy"]
    assert "0/4" in row and "granulate" in row
    listed = json.loads(
        bitware(
            "workers", "--data", str(up.data), "--json", BITWARE_ADMIN_PASSWORD=up.admin_password
        ).stdout
    )
    assert listed["workers"][0]["state"] == "WORKER_STATE_HEALTHY"


def test_workers_with_a_client_key_is_refused_in_words(up: Up, client_key: ClientKey) -> None:
    result = bitware("workers", "--data", str(up.data), BITWARE_API_KEY=client_key.api_key)
    line = one_line_error(result)
    assert line.startswith("bitware: PERMISSION_DENIED: ")
    assert "admin session" in line


def test_queue_shows_depth_per_priority(up: Up, client_key: ClientKey) -> None:
    result = bitware("queue", "--data", str(up.data), BITWARE_API_KEY=client_key.api_key)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["PRIORITY", "WAITING", "OLDEST", "WAIT"]
    assert [line.split()[0] for line in lines[1:5]] == ["critical", "high", "normal", "low"]
    assert lines[-1].startswith("total 0 waiting · ")
    document = json.loads(
        bitware(
            "queue", "--data", str(up.data), "--json", BITWARE_API_KEY=client_key.api_key
        ).stdout
    )
    assert document["total_depth"] == 0
    assert len(document["levels"]) == 4


def test_demo_runs_against_the_running_mesh(up: Up) -> None:
    result = bitware(
        "demo",
        "--kam",
        up.address("kam"),
        "--orchestrator",
        up.address("orchestrator"),
        "--granulator",
        up.address("granulator-1"),
        "--type",
        "workflow",
        BITWARE_ADMIN_PASSWORD=up.admin_password,
    )
    assert result.returncode == 0, result.stderr
    assert "100% #" in result.stdout
    assert "execution_succeeded" in result.stdout
    assert "\nworkflow: " in result.stdout


def test_demo_against_a_mesh_needs_the_admin_password(up: Up) -> None:
    line = one_line_error(bitware("demo", "--kam", up.address("kam")))
    assert "BITWARE_ADMIN_PASSWORD" in line


def test_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = bitware(
            "up", "--data", str(tmp_path), *FREE_PORTS, "--gateway-port", str(port), timeout=60
        )
    line = one_line_error(result)
    assert line.startswith("bitware: gateway exited with code 2 before it was ready: ")
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert line.endswith("; choose another with --gateway-port or stop what uses it")


def test_up_refuses_a_second_mesh_on_the_same_data(up: Up) -> None:
    line = one_line_error(bitware("up", "--data", str(up.data), timeout=30))
    assert "a mesh is already running from" in line
