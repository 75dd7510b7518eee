"""The `openai` provider against a real local OpenAI-compatible server, through the real
`openai` client: every reply ends as a structure or a typed failure, with every call's tokens."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bitware_core.config import Settings
from granulator_server.domain import SEED_TEMPLATES, StructureTemplate, generate_offline
from granulator_server.errors import (
    InvalidOutput,
    ProviderRefused,
    ProviderTransient,
)
from granulator_server.pricing import PriceTable
from granulator_server.providers import ModelMetrics, OpenAIProvider
from granulator_server.providers.formats import strict_subset
from granulator_server.providers.replies import ElementCounter, elements_so_far, estimate_tokens
from tests.granulator.fake_openai import FakeOpenAI, failure, reply
from tests.metrics import value

COURSE: StructureTemplate = next(t for t in SEED_TEMPLATES if t.structure_type == "course")
SPEC: dict[str, Any] = {
    "topic": "AI Development",
    "audience": "beginners",
    "granularity": 2,
    "constraints": {},
    "options": {},
}
VALID = generate_offline(COURSE, "AI Development", "beginners", 2, {})


def provider(fake: FakeOpenAI, **options: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "base_url": fake.base_url,
        "api_key": "sk-test",
        "timeout": 5.0,
        "max_retries": 2,
        "backoff": 0.01,
        "stream": False,
    }
    return OpenAIProvider(**{**settings, **options})


def user_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_valid_reply_uses_strict_structured_outputs_and_counts_tokens(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(reply(VALID, prompt_tokens=1000, completion_tokens=500))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    usage = generation.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.llm_calls) == (
        1000,
        500,
        1,
    )
    assert usage.provider == "openai" and usage.model == "gpt-4o-mini"
    assert usage.cost_usd == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    request = fake_openai.requests[0]
    assert request["response_format"]["type"] == "json_schema"
    assert request["response_format"]["json_schema"]["strict"] is True
    assert request["response_format"]["json_schema"]["schema"] == strict_subset(COURSE.json_schema)
    assert "AI Development" in user_messages(request)[0]


async def test_fenced_markdown_reply_is_unwrapped(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(f"```json\n{json.dumps(VALID, indent=2)}\n```"))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert len(fake_openai.requests) == 1


async def test_missing_fields_are_re_asked_with_the_validation_errors(
    fake_openai: FakeOpenAI,
) -> None:
    broken = {k: v for k, v in VALID.items() if k != "summary"}
    fake_openai.add(
        reply(broken, prompt_tokens=100, completion_tokens=40),
        reply(VALID, prompt_tokens=300, completion_tokens=60),
    )

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert generation.usage.prompt_tokens == 400
    assert generation.usage.completion_tokens == 100
    assert generation.usage.llm_calls == 2
    re_ask = fake_openai.requests[1]["messages"]
    assert re_ask[-2] == {"role": "assistant", "content": json.dumps(broken)}
    assert "'summary' is a required property" in re_ask[-1]["content"]


async def test_wrong_types_fail_as_invalid_output_after_bounded_re_asks(
    fake_openai: FakeOpenAI,
) -> None:
    wrong = {**VALID, "modules": "three modules"}
    fake_openai.add(*(reply(wrong, prompt_tokens=10, completion_tokens=5) for _ in range(3)))

    with pytest.raises(InvalidOutput) as raised:
        await provider(fake_openai, max_reasks=2).generate(COURSE, SPEC, "")

    assert raised.value.reason == "SCHEMA_VIOLATION"
    assert "is not of type 'array'" in raised.value.message
    assert len(fake_openai.requests) == 3
    assert raised.value.usage.prompt_tokens == 30
    assert raised.value.usage.completion_tokens == 15
    assert raised.value.usage.llm_calls == 3


async def test_malformed_json_is_re_asked(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply('{"title": "AI", "modules": ['), reply(VALID))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert "not valid JSON" in user_messages(fake_openai.requests[1])[-1]


async def test_truncated_reply_is_asked_again_with_a_larger_budget_not_continued(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(
        reply('{"title": "AI Dev', finish_reason="length", prompt_tokens=100, completion_tokens=64),
        reply(VALID, prompt_tokens=100, completion_tokens=90),
    )

    generation = await provider(fake_openai, max_output_tokens=64).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    first, second = fake_openai.requests
    assert (first["max_tokens"], second["max_tokens"]) == (64, 128)
    assert second["messages"] == first["messages"]  # nothing appended to the cut-off reply
    assert generation.usage.completion_tokens == 154
    assert generation.usage.llm_calls == 2


async def test_truncated_twice_fails_as_truncated(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(
        reply("{", finish_reason="length", completion_tokens=64),
        reply("{", finish_reason="length", completion_tokens=128),
    )

    with pytest.raises(InvalidOutput) as raised:
        await provider(fake_openai, max_output_tokens=64).generate(COURSE, SPEC, "")

    assert raised.value.reason == "TRUNCATED"
    assert raised.value.error_class == "INVALID_OUTPUT"
    assert raised.value.usage.completion_tokens == 192
    assert len(fake_openai.requests) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_refusal_fails_as_refused_without_retry(
    fake_openai: FakeOpenAI, stream: bool
) -> None:
    fake_openai.add(reply("", refusal="I can't help with that.", completion_tokens=7))

    with pytest.raises(ProviderRefused) as raised:
        await provider(fake_openai, stream=stream).generate(COURSE, SPEC, "")

    assert raised.value.error_class == "REFUSED"
    assert raised.value.reason == "REFUSED"
    assert "can't help" in raised.value.message
    assert raised.value.usage.completion_tokens == 7
    assert len(fake_openai.requests) == 1


async def test_content_filter_fails_as_refused(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply('{"title":', finish_reason="content_filter"))

    with pytest.raises(ProviderRefused) as raised:
        await provider(fake_openai).generate(COURSE, SPEC, "")

    assert raised.value.reason == "CONTENT_FILTERED"
    assert len(fake_openai.requests) == 1


async def test_rate_limit_is_retried_after_the_retry_after_header(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(failure(429, "slow down", headers={"Retry-After": "0.3"}), reply(VALID))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert generation.usage.llm_calls == 2
    assert fake_openai.arrivals[1] - fake_openai.arrivals[0] >= 0.3


async def test_persistent_rate_limit_fails_as_transient_with_retry_after(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(*(failure(429, headers={"Retry-After": "0.05"}) for _ in range(3)))

    with pytest.raises(ProviderTransient) as raised:
        await provider(fake_openai, max_retries=2).generate(COURSE, SPEC, "")

    assert raised.value.reason == "RATE_LIMITED"
    assert raised.value.retry_after == pytest.approx(0.05)
    assert raised.value.usage.llm_calls == 3
    assert len(fake_openai.requests) == 3


async def test_retry_after_longer_than_allowed_fails_at_once(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(failure(429, headers={"Retry-After": "120"}))

    with pytest.raises(ProviderTransient) as raised:
        await provider(fake_openai, max_retry_wait=10).generate(COURSE, SPEC, "")

    assert raised.value.retry_after == 120
    assert len(fake_openai.requests) == 1


async def test_server_error_is_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(failure(500, "boom"), failure(503, "busy"), reply(VALID, completion_tokens=9))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert generation.usage.llm_calls == 3
    assert generation.usage.completion_tokens == 9


async def test_persistent_server_error_fails_as_transient(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(*(failure(500, "boom") for _ in range(2)))

    with pytest.raises(ProviderTransient) as raised:
        await provider(fake_openai, max_retries=1).generate(COURSE, SPEC, "")

    assert raised.value.reason == "PROVIDER_UNAVAILABLE"
    assert raised.value.error_class == "TRANSIENT"
    assert raised.value.retry_after > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_too_slow_reply_times_out_and_fails_as_transient(
    fake_openai: FakeOpenAI, stream: bool
) -> None:
    # Each reply would take 8 s: finishing in well under one of them proves the timeout cut both
    # calls short, with a margin wide enough for a loaded machine.
    fake_openai.add(*(reply(VALID, delay=8.0) for _ in range(2)))
    started = time.monotonic()

    with pytest.raises(ProviderTransient) as raised:
        await provider(fake_openai, timeout=0.3, max_retries=1, stream=stream).generate(
            COURSE, SPEC, ""
        )

    assert raised.value.reason == "PROVIDER_TIMEOUT"
    assert raised.value.usage.llm_calls == 2
    assert time.monotonic() - started < 5.0


async def test_streamed_reply_reports_elements_and_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(VALID, pieces=20, prompt_tokens=700, completion_tokens=900))
    counts: list[int] = []

    generation = await provider(fake_openai, stream=True).generate(COURSE, SPEC, "", counts.append)

    assert generation.document == VALID
    assert generation.usage.prompt_tokens == 700
    assert generation.usage.completion_tokens == 900
    request = fake_openai.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert len(counts) > 3 and counts == sorted(counts)
    assert counts[-1] == json.dumps(VALID).count('"title"')


async def test_feedback_from_the_quality_gate_reaches_the_prompt(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(VALID))

    await provider(fake_openai).generate(COURSE, SPEC, "- /modules: expected 3-4 modules")

    assert "expected 3-4 modules" in user_messages(fake_openai.requests[0])[0]


async def test_judge_scores_each_criterion(fake_openai: FakeOpenAI) -> None:
    verdict = {
        "ratings": {"accuracy": 8, "coherence": 6, "coverage": 10},
        "feedback": "More examples.",
    }
    fake_openai.add(reply(verdict, prompt_tokens=50, completion_tokens=20))

    judgement = await provider(fake_openai).judge(COURSE, SPEC, VALID, 2)

    assert judgement is not None
    assert judgement.score == 80.0
    assert judgement.criteria == {"accuracy": 0.8, "coherence": 0.6, "coverage": 1.0}
    assert judgement.feedback == "More examples."
    assert judgement.usage.prompt_tokens == 50


def test_price_table_reads_overrides_and_prices_dated_models_by_prefix() -> None:
    settings = Settings.from_env(
        {"BITWARE_PRICE_TABLE": '{"local-llama": {"input": 1.0, "output": 2.0}}'}
    )
    table = PriceTable.with_overrides(settings.providers.price_table)

    assert table.cost("local-llama", 1_000_000, 500_000) == 2.0
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == 0.15
    assert table.cost("unknown-model", 10, 10) == 0.0
    with pytest.raises(ValueError, match="BITWARE_PRICE_TABLE"):
        PriceTable.with_overrides('{"m": {"input": "x"}}')


async def test_stream_without_usage_is_estimated_not_free(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(VALID, include_usage=False))

    generation = await provider(fake_openai, stream=True).generate(COURSE, SPEC, "")

    assert generation.usage.completion_tokens == estimate_tokens(json.dumps(VALID))
    assert generation.usage.prompt_tokens > 100
    assert generation.usage.cost_usd > 0


def test_element_counter_counts_keys_split_across_pieces() -> None:
    counter = ElementCounter()
    pieces = ['{"tit', 'le": "A", "modules": [{"ti', 'tle"', ': "B"}]}']

    counts = [counter.feed(piece) for piece in pieces]

    assert counts == [0, 1, 1, 2]
    assert counter.count == elements_so_far("".join(pieces))


async def test_model_calls_are_counted_in_the_process_metrics(fake_openai: FakeOpenAI) -> None:
    registry = CollectorRegistry()
    fake_openai.add(
        failure(500), reply(VALID, prompt_tokens=1000, completion_tokens=500, delay=0.5)
    )
    generating = asyncio.create_task(
        provider(fake_openai, metrics=ModelMetrics(registry)).generate(COURSE, SPEC, "")
    )
    await fake_openai.wait_for_requests(2)  # the second call waits for its reply now

    model = {"model": "gpt-4o-mini"}
    assert value(generate_latest(registry).decode(), "bitware_model_calls_in_flight", **model) == 1
    await generating
    body = generate_latest(registry).decode()
    assert value(body, "bitware_model_calls_in_flight", **model) == 0
    assert value(body, "bitware_model_call_seconds_count", **model, outcome="error") == 1
    assert value(body, "bitware_model_call_seconds_count", **model, outcome="ok") == 1
    assert value(body, "bitware_model_call_seconds_sum", **model, outcome="ok") >= 0.5
    assert value(body, "bitware_model_tokens_total", **model, type="input") == 1000
    assert value(body, "bitware_model_tokens_total", **model, type="output") == 500
    cost = value(body, "bitware_model_cost_usd_total", **model)
    assert cost == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
