"""`stages.check_offer`, the granulator's decision on an offered stage attempt, without a server
or a database: the `Work` it would do, or a `Decline` with its reason and message, in the order
the Handshake has always checked. Slots and reservations are tested in test_worker_protocol.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from granulator_server.domain import SEED_TEMPLATES, StructureTemplate
from granulator_server.stages import (
    CAPABILITIES,
    Decline,
    DeclineReason,
    Offered,
    Work,
    check_offer,
)

BY_NAME = {t.name: t for t in SEED_TEMPLATES}
BY_TYPE = {t.structure_type: t for t in SEED_TEMPLATES}


async def resolve(query: str) -> StructureTemplate | None:
    return BY_NAME.get(query) or BY_TYPE.get(query)


def offered(**changes: Any) -> Offered:
    spec = {"topic": "AI Development", "structure_type": "course", "granularity": 2}
    base = Offered(
        execution_id="ex1",
        stage_id="s1",
        attempt=1,
        epoch=1,
        client_id="client-1",
        capability="granulate",
        action="generate",
        structure_template="course_standard",
        spec=spec,
        params={},
        feedback="be brief",
        min_quality=60,
    )
    return replace(base, **{"spec": {**spec, **changes.pop("spec", {})}, **changes})


async def test_an_offer_it_can_serve_becomes_the_work_to_do() -> None:
    work = await check_offer(offered(), resolve)

    assert isinstance(work, Work)
    assert (work.execution_id, work.stage_id, work.attempt) == ("ex1", "s1", 1)
    assert work.template is BY_NAME["course_standard"]
    assert work.spec["topic"] == "AI Development"
    assert (work.feedback, work.min_quality, work.client_id) == ("be brief", 60, "client-1")


async def test_without_a_template_name_the_structure_type_finds_one() -> None:
    work = await check_offer(
        offered(structure_template="", spec={"structure_type": "quiz"}), resolve
    )

    assert isinstance(work, Work) and work.template is BY_NAME["quiz_standard"]


async def test_validate_works_on_the_previous_stage_s_job() -> None:
    validate = {"capability": "validate", "action": "validate"}
    named = await check_offer(offered(**validate, previous_job_id="job_1"), resolve)
    from_output = await check_offer(
        offered(**validate, previous_output={"job_id": "job_2"}), resolve
    )

    assert isinstance(named, Work) and named.previous_job_id == "job_1"
    assert isinstance(from_output, Work) and from_output.previous_job_id == "job_2"


@pytest.mark.parametrize(
    ("changes", "reason", "message"),
    [
        (
            {"capability": "translate"},
            DeclineReason.UNSUPPORTED,
            "capability 'translate' with action 'generate' is not offered here; capabilities: "
            + ", ".join(CAPABILITIES),
        ),
        ({"action": "summarise"}, DeclineReason.UNSUPPORTED, "action 'summarise'"),
        (
            {
                "structure_template": "",
                "unknown_structure_type": 42,
                "spec": {"structure_type": ""},
            },
            DeclineReason.INVALID_INPUT,
            "unknown structure type 42",
        ),
        (
            {"structure_template": "poem"},
            DeclineReason.UNKNOWN_TEMPLATE,
            "no structure template matches 'poem'",
        ),
        (
            {"structure_template": "", "spec": {"structure_type": ""}},
            DeclineReason.UNKNOWN_TEMPLATE,
            "no structure template matches ''",
        ),
        (
            {"structure_template": "quiz_standard"},
            DeclineReason.INVALID_INPUT,
            "template quiz_standard builds quiz",
        ),
        ({"spec": {"topic": "  "}}, DeclineReason.INVALID_INPUT, "spec.topic is empty"),
        (
            {"spec": {"granularity": 6}},
            DeclineReason.INVALID_INPUT,
            "spec.granularity 6 is not from 1 to 5",
        ),
        (
            {"capability": "validate", "action": "validate"},
            DeclineReason.INVALID_INPUT,
            "validate needs the previous stage's job",
        ),
        (
            {"params": {"judge_level": "7"}},
            DeclineReason.INVALID_INPUT,
            "params.judge_level must be 0-3, got 7",
        ),
    ],
)
async def test_an_offer_it_cannot_serve_is_declined_with_its_reason(
    changes: dict[str, Any], reason: DeclineReason, message: str
) -> None:
    decision = await check_offer(offered(**changes), resolve)

    assert isinstance(decision, Decline)
    assert decision.reason == reason
    assert message in decision.message
    assert decision.retry_after == 0.0


async def test_every_input_problem_is_named_at_once() -> None:
    decision = await check_offer(
        offered(spec={"topic": "", "granularity": 0}, params={"judge_level": "x"}), resolve
    )

    assert isinstance(decision, Decline) and decision.reason == DeclineReason.INVALID_INPUT
    assert decision.message.split("; ")[:2] == [
        "spec.topic is empty",
        "spec.granularity 0 is not from 1 to 5",
    ]
    assert decision.message.split("; ")[2].startswith("params.")


async def test_the_checks_keep_their_order() -> None:
    asked: list[str] = []

    async def counting(query: str) -> StructureTemplate | None:
        asked.append(query)
        return await resolve(query)

    # A stopping worker declines before anything else, and looks nothing up.
    stopping = await check_offer(offered(capability="translate"), counting, draining=True)
    assert isinstance(stopping, Decline) and stopping.reason == DeclineReason.DRAINING
    assert stopping.message == "the worker is stopping"
    # An unsupported capability beats an unknown structure type; neither looks anything up.
    unsupported = await check_offer(
        offered(capability="translate", unknown_structure_type=42), counting
    )
    assert isinstance(unsupported, Decline) and unsupported.reason == DeclineReason.UNSUPPORTED
    # An unknown template beats a bad input.
    unknown = await check_offer(offered(structure_template="poem", spec={"topic": ""}), counting)
    assert isinstance(unknown, Decline) and unknown.reason == DeclineReason.UNKNOWN_TEMPLATE
    assert asked == ["poem"]
