"""Master templates: immutable versions, validation, lookup, deprecation, and the seeds."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from bitware.common.v1 import common_pb2
from bitware.kam.v1 import templates_pb2
from bitware_core import convert
from tests.common import PARKED_CAPABILITY, Client
from tests.kam.helpers import fails, kam, reason, stage, template, violated_fields


async def test_an_existing_name_gets_a_new_immutable_version(client: Client) -> None:
    async with kam(client.mesh) as k:
        first = await k.create_template(client.admin, template("my_course", cost_estimate_usd=0.1))
        second = await k.create_template(client.admin, template("my_course", cost_estimate_usd=0.2))
        assert (first.version, second.version) == (1, 2)
        get = k.templates.GetMasterTemplate
        latest = await get(
            templates_pb2.GetMasterTemplateRequest(name="my_course"), metadata=client.key
        )
        assert latest.template.version == 2 and latest.template.cost_estimate_usd == 0.2
        pinned = await get(
            templates_pb2.GetMasterTemplateRequest(name="my_course", version=1), metadata=client.key
        )
        assert pinned.template == first
        await fails(
            get(
                templates_pb2.GetMasterTemplateRequest(name="my_course", version=3),
                metadata=client.key,
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        error = await fails(
            get(templates_pb2.GetMasterTemplateRequest(), metadata=client.key),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"name"}


async def test_invalid_definitions_are_rejected_with_a_violation_per_problem(
    client: Client,
) -> None:
    bad = templates_pb2.MasterTemplate(
        name="Bad Name",
        structure_type=common_pb2.STRUCTURE_TYPE_COURSE,
        allowed_tiers=[common_pb2.TIER_BASIC, 9],
        stages=[
            stage(
                1, capability="Granulate-It", timeout=convert.duration(-1), min_quality_score=101
            ),
            stage(
                1,
                retry_policy=templates_pb2.RetryPolicy(max_attempts=11, backoff_multiplier=0.5),
            ),
            stage(2, retry_policy=templates_pb2.RetryPolicy(max_attempts=0)),
        ],
    )
    async with kam(client.mesh) as k:
        error = await fails(k.create_template(client.admin, bad), grpc.StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {
            "template.name",
            "template.allowed_tiers[1]",
            "template.stages[0].capability",
            "template.stages[0].timeout",
            "template.stages[0].min_quality_score",
            "template.stages[1].order",
            "template.stages[1].retry_policy.max_attempts",
            "template.stages[1].retry_policy.backoff_multiplier",
            "template.stages[2].retry_policy.max_attempts",
        }
        empty = templates_pb2.MasterTemplate(
            name="empty", structure_type=common_pb2.STRUCTURE_TYPE_QUIZ
        )
        error = await fails(
            k.create_template(client.admin, empty), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == {"template.stages"}
        # Nothing was stored.
        await fails(
            k.templates.GetMasterTemplate(
                templates_pb2.GetMasterTemplateRequest(name="empty"), metadata=client.admin
            ),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_first_start_installs_one_template_per_structure_type_and_course_reviewed(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        listed = await k.templates.ListMasterTemplates(
            templates_pb2.ListMasterTemplatesRequest(page_size=4), metadata=client.key
        )
        names = [t.name for t in listed.templates]
        while listed.next_page_token:
            listed = await k.templates.ListMasterTemplates(
                templates_pb2.ListMasterTemplatesRequest(
                    page_size=4, page_token=listed.next_page_token
                ),
                metadata=client.key,
            )
            names += [t.name for t in listed.templates]
        assert names == sorted(names)
        for kind in ("course", "quiz", "novel", "workflow", "knowledge_map", "learning_path"):
            assert f"{kind}_standard" in names
        reviewed = await k.templates.GetMasterTemplate(
            templates_pb2.GetMasterTemplateRequest(name="course_reviewed"), metadata=client.key
        )
    generate, review = reviewed.template.stages
    assert (generate.capability, generate.action, generate.structure_template) == (
        "granulate",
        "generate",
        "course",
    )
    assert (review.order, review.capability, review.action) == (2, "validate", "validate")
    assert review.min_quality_score == 70 and review.review_again_below_quality


async def test_a_deprecated_template_cannot_be_executed(client: Client) -> None:
    async with kam(client.mesh) as k:
        await k.create_template(client.admin, template("old_course"))
        pinned = await k.create_request(client.key, "old_course")
        deprecated = await k.templates.DeprecateMasterTemplate(
            templates_pb2.DeprecateMasterTemplateRequest(name="old_course"), metadata=client.admin
        )
        assert deprecated.template.deprecated
        error = await fails(
            k.execute(client.key, pinned.request_id), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert reason(error) == "TEMPLATE_DEPRECATED"
        error = await fails(
            k.create_request(client.key, "old_course"), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert reason(error) == "TEMPLATE_DEPRECATED"
        visible = await k.templates.ListMasterTemplates(
            templates_pb2.ListMasterTemplatesRequest(page_size=200), metadata=client.key
        )
        assert "old_course" not in [t.name for t in visible.templates]
        everything = await k.templates.ListMasterTemplates(
            templates_pb2.ListMasterTemplatesRequest(page_size=200, include_deprecated=True),
            metadata=client.key,
        )
        assert "old_course" in [t.name for t in everything.templates]
        await fails(
            k.templates.DeprecateMasterTemplate(
                templates_pb2.DeprecateMasterTemplateRequest(name="ghost"), metadata=client.admin
            ),
            grpc.StatusCode.NOT_FOUND,
        )


def orders(*numbers: int) -> templates_pb2.MasterTemplate:
    return template("numbered", *(stage(n) for n in numbers))


async def test_stage_orders_must_run_from_one_to_n_without_gaps_or_repeats(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        for numbers, bad in (
            ((1, 3), {"template.stages[1].order"}),
            ((1, 2, 2), {"template.stages[2].order"}),
            ((2,), {"template.stages[0].order"}),
            ((0, 1), {"template.stages[0].order"}),
            ((4, 1, 4), {"template.stages[0].order", "template.stages[2].order"}),
        ):
            error = await fails(
                k.create_template(client.admin, orders(*numbers)),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert violated_fields(error) == bad, numbers
        # Any listing order is fine when the numbers are 1..N; stages are stored in order.
        created = await k.create_template(client.admin, orders(2, 1))
        assert [s.order for s in created.stages] == [1, 2]


async def test_grpcurl_sees_a_gapped_template_refused_with_the_field(client: Client) -> None:
    body = json_format.MessageToJson(
        templates_pb2.CreateMasterTemplateRequest(template=orders(1, 3))
    )
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "grpcurl"),
        "-plaintext",
        "-format-error",
        "-H",
        f"x-bitware-session-token: {client.admin_session}",
        "-d",
        body,
        client.mesh.kam.address,
        "bitware.kam.v1.TemplateService/CreateMasterTemplate",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0], stderr
    status = json.loads(stdout or stderr)
    assert "template.stages[1].order" in status["message"]


async def test_a_stage_must_name_a_capability_and_action_the_mesh_knows(client: Client) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.create_template(
                client.admin,
                template(
                    "unknown_work",
                    stage(1, capability="translate"),
                    stage(2, capability="granulate", action="validate"),
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {
            "template.stages[0].capability",
            "template.stages[1].action",
        }
        # BITWARE_EXTRA_CAPABILITIES (the test mesh names one) adds the capabilities of other
        # workers, whose actions are theirs to check.
        created = await k.create_template(
            client.admin,
            template("other_worker", stage(1), stage(2, capability=PARKED_CAPABILITY, action="x")),
        )
        assert created.stages[1].capability == PARKED_CAPABILITY


def review(order: int = 2, **fields: object) -> templates_pb2.StageDefinition:
    return stage(order, capability="validate", action="validate", name="review", **fields)


async def test_a_gated_review_stage_must_say_that_it_reviews_the_same_document_again(
    client: Client,
) -> None:
    async with kam(client.mesh) as k:
        error = await fails(
            k.create_template(
                client.admin, template("silent_gate", stage(1), review(min_quality_score=70))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {"template.stages[1].review_again_below_quality"}
        # A review needs a document from an earlier stage; the flag is for reviews only.
        error = await fails(
            k.create_template(
                client.admin,
                template(
                    "misplaced",
                    review(1),
                    stage(2, min_quality_score=60, review_again_below_quality=True),
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violated_fields(error) == {
            "template.stages[0].order",
            "template.stages[1].review_again_below_quality",
        }
        said = await k.create_template(
            client.admin,
            template(
                "said_so",
                stage(1, min_quality_score=60),
                review(min_quality_score=70, review_again_below_quality=True),
            ),
        )
        assert said.stages[1].review_again_below_quality
        # A review without a gate, or a gate on the generating stage, needs nothing more.
        await k.create_template(
            client.admin, template("gate_on_generate", stage(1, min_quality_score=70), review())
        )
