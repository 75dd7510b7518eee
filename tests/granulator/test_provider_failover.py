"""Several OpenAI-compatible endpoints (`BITWARE_PROVIDERS`): failover after repeated failures
and back after the cool-down, usage per provider, and calls paced by rate-limit headers. Each
endpoint is a real local server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bitware_core.config import Settings
from bitware_core.domain import ProviderUsage, Usage
from granulator_server.errors import ProviderTransient
from granulator_server.pricing import Price, PriceTable
from granulator_server.providers import choose_provider
from granulator_server.providers.endpoints import EndpointConfig, duration, parse_providers
from granulator_server.providers.openai_chat import OpenAIProvider
from tests.granulator.fake_openai import FakeOpenAI, failure, reply
from tests.granulator.test_openai_provider import COURSE, SPEC, VALID

DEFAULTS = EndpointConfig(name="openai", base_url="", model="gpt-4o-mini")


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    """A second endpoint."""
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def two_endpoints(primary: FakeOpenAI, secondary: FakeOpenAI, **options: Any) -> OpenAIProvider:
    endpoints = [
        EndpointConfig("primary", primary.base_url, "big-model", price=Price(1.0, 2.0)),
        EndpointConfig("backup", secondary.base_url, "small-model", price=Price(0.5, 1.0)),
    ]
    settings: dict[str, Any] = {
        "endpoints": endpoints,
        "timeout": 5.0,
        "max_retries": 3,
        "backoff": 0.01,
        "stream": False,
        "failures_before_cooldown": 2,
        "cooldown": 60.0,
    }
    return OpenAIProvider(**{**settings, **options})


async def test_repeated_failures_move_calls_to_the_next_endpoint_and_usage_says_who_served(
    fake_openai: FakeOpenAI, backup: FakeOpenAI
) -> None:
    fake_openai.add(failure(500, "overloaded"), failure(503, "overloaded"))
    backup.add(reply(VALID, prompt_tokens=1000, completion_tokens=400), reply(VALID))
    generator = two_endpoints(fake_openai, backup)

    first = await generator.generate(COURSE, SPEC, "")
    second = await generator.generate(COURSE, SPEC, "")  # the primary is cooling down

    assert first.document == second.document == VALID
    assert (len(fake_openai.requests), len(backup.requests)) == (2, 2)
    assert backup.requests[0]["model"] == "small-model"
    usage = first.usage
    assert (usage.provider, usage.model, usage.llm_calls) == ("backup", "small-model", 3)
    assert usage.to_json()["by_provider"] == [
        {
            "provider": "primary",
            "model": "big-model",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "llm_calls": 2,
        },
        {
            "provider": "backup",
            "model": "small-model",
            "prompt_tokens": 1000,
            "completion_tokens": 400,
            "cost_usd": pytest.approx((1000 * 0.5 + 400 * 1.0) / 1e6),
            "llm_calls": 1,
        },
    ]
    assert usage.cost_usd == pytest.approx((1000 * 0.5 + 400 * 1.0) / 1e6)
    assert [call.endpoint for call in first.calls] == ["primary", "primary", "backup"]
    assert second.usage.provider == "backup" and second.usage.llm_calls == 1


async def test_the_first_endpoint_is_used_again_after_its_cool_down(
    fake_openai: FakeOpenAI, backup: FakeOpenAI
) -> None:
    fake_openai.add(failure(429), failure(429), reply(VALID))
    backup.add(reply(VALID))
    generator = two_endpoints(fake_openai, backup, cooldown=0.5)

    during = await generator.generate(COURSE, SPEC, "")
    await asyncio.sleep(0.6)  # past the cool-down
    after = await generator.generate(COURSE, SPEC, "")

    assert during.usage.provider == "backup"
    assert after.usage.provider == "primary" and after.usage.llm_calls == 1
    assert (len(fake_openai.requests), len(backup.requests)) == (3, 1)


async def test_one_endpoint_never_cools_down_and_fails_as_transient(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(*(failure(500) for _ in range(4)), reply(VALID))
    generator = OpenAIProvider(
        model="m",
        base_url=fake_openai.base_url,
        max_retries=3,
        backoff=0.01,
        stream=False,
        failures_before_cooldown=1,
    )

    with pytest.raises(ProviderTransient):
        await generator.generate(COURSE, SPEC, "")
    generation = await generator.generate(COURSE, SPEC, "")

    assert generation.document == VALID  # the same endpoint, straight away
    assert generation.usage.by_provider[0].provider == "openai"


async def test_a_retry_after_longer_than_allowed_moves_to_the_next_endpoint_at_once(
    fake_openai: FakeOpenAI, backup: FakeOpenAI
) -> None:
    fake_openai.add(failure(429, headers={"Retry-After": "120"}))
    backup.add(reply(VALID))
    started = time.monotonic()

    generation = await two_endpoints(fake_openai, backup, max_retry_wait=10).generate(
        COURSE, SPEC, ""
    )

    assert generation.usage.provider == "backup"
    assert time.monotonic() - started < 10


async def test_every_endpoint_failing_ends_as_transient_within_bounds(
    fake_openai: FakeOpenAI, backup: FakeOpenAI
) -> None:
    generator = two_endpoints(fake_openai, backup, max_retries=1)  # scripts exhausted: 500s

    with pytest.raises(ProviderTransient) as raised:
        await generator.generate(COURSE, SPEC, "")

    assert raised.value.reason == "PROVIDER_UNAVAILABLE"
    assert len(fake_openai.requests) + len(backup.requests) <= 4


@pytest.mark.parametrize("stream", [False, True])
async def test_no_requests_left_holds_the_next_call_until_the_reset(
    fake_openai: FakeOpenAI, stream: bool
) -> None:
    limits = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "400ms"}
    fake_openai.add(reply(VALID, headers=limits), reply(VALID))
    generator = OpenAIProvider(model="m", base_url=fake_openai.base_url, stream=stream)

    await generator.generate(COURSE, SPEC, "")
    await generator.generate(COURSE, SPEC, "")

    assert fake_openai.arrivals[1] - fake_openai.arrivals[0] >= 0.4


async def test_concurrent_calls_share_the_room_the_headers_report(
    fake_openai: FakeOpenAI,
) -> None:
    limits = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "2s"}
    fake_openai.add(reply(VALID, headers=limits), reply(VALID), reply(VALID))
    generator = OpenAIProvider(model="m", base_url=fake_openai.base_url, stream=False)

    await generator.generate(COURSE, SPEC, "")
    await asyncio.gather(*(generator.generate(COURSE, SPEC, "") for _ in range(2)))

    first, second, third = fake_openai.arrivals
    assert second - first < 2  # the one request left goes at once
    assert third - first >= 2  # the other waits for the reset


async def test_too_few_tokens_left_holds_the_next_call_until_the_reset(
    fake_openai: FakeOpenAI,
) -> None:
    limits = {
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "500",  # less than the next call's max_tokens alone
        "x-ratelimit-reset-tokens": "0.4s",
    }
    fake_openai.add(reply(VALID, headers=limits), reply(VALID))
    generator = OpenAIProvider(model="m", base_url=fake_openai.base_url, stream=False)

    await generator.generate(COURSE, SPEC, "")
    await generator.generate(COURSE, SPEC, "")

    assert fake_openai.arrivals[1] - fake_openai.arrivals[0] >= 0.4


async def test_room_left_does_not_hold_calls_back(fake_openai: FakeOpenAI) -> None:
    limits = {
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-remaining-tokens": "1000000",
        "x-ratelimit-reset-tokens": "30s",
    }
    fake_openai.add(reply(VALID, headers=limits), reply(VALID))
    generator = OpenAIProvider(model="m", base_url=fake_openai.base_url, stream=False)
    started = time.monotonic()

    await generator.generate(COURSE, SPEC, "")
    await generator.generate(COURSE, SPEC, "")

    assert time.monotonic() - started < 10


def test_rate_limit_reset_durations_parse() -> None:
    assert duration("20ms") == pytest.approx(0.02)
    assert duration("1s") == 1.0
    assert duration("6m0s") == 360.0
    assert duration("1h2m3.5s") == pytest.approx(3723.5)
    assert duration("2.5") == 2.5
    assert duration("soon") is None and duration("") is None


def test_providers_list_reads_keys_from_the_named_variables_only() -> None:
    raw = json.dumps(
        [
            {
                "name": "cloud",
                "base_url": "https://api.example.com/v1",
                "model": "m1",
                "api_key_env": "CLOUD_KEY",
                "input_price": 0.1,
                "output_price": 0.4,
            },
            {
                "name": "local",
                "base_url": "http://127.0.0.1:8000/v1",
                "model": "smollm2",
                "structured": "json_object_schema",
                "extra_body": {"repeat_penalty": 1.1},
                "max_output_tokens": 1500,
            },
        ]
    )

    cloud, local = parse_providers(raw, {"CLOUD_KEY": "sk-secret"}, DEFAULTS)

    assert (cloud.api_key, cloud.price, cloud.structured) == ("sk-secret", Price(0.1, 0.4), "auto")
    assert "sk-secret" not in repr(cloud)
    assert (local.api_key, local.price, local.structured) == ("", None, "json_object_schema")
    assert (local.extra_body, local.max_output_tokens) == ({"repeat_penalty": 1.1}, 1500)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"name": "a", "base_url": "u", "model": "m", "api_key": "sk-1"}]', "api_key_env"),
        ('[{"name": "a", "base_url": "u"}]', r"\[0\]\.model is required"),
        ('[{"name": "a", "base_url": "u", "model": "m", "colour": 1}]', "unknown field"),
        ('[{"name": "a", "base_url": "u", "model": "m", "api_key_env": "NOPE"}]', "NOPE"),
        ('[{"name": "a", "base_url": "u", "model": "m", "input_price": 1}]', "output_price"),
        ('[{"name": "a", "base_url": "u", "model": "m", "structured": "x"}]', "auto"),
        (
            '[{"name": "a", "base_url": "u", "model": "m"}, '
            '{"name": "a", "base_url": "v", "model": "m"}]',
            "distinct",
        ),
    ],
)
def test_bad_providers_list_is_refused_with_the_entry_and_field(entries: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_providers(entries, {}, DEFAULTS)


def test_settings_with_providers_choose_the_openai_provider_with_every_endpoint() -> None:
    raw = json.dumps(
        [
            {"name": "a", "base_url": "http://127.0.0.1:9/v1", "model": "m1"},
            {"name": "b", "base_url": "http://127.0.0.1:10/v1", "model": "m2"},
        ]
    )
    settings = Settings.from_env({"BITWARE_PROVIDERS": raw, "BITWARE_PROVIDER_COOLDOWN": "5"})

    provider = choose_provider(settings, PriceTable())

    assert isinstance(provider, OpenAIProvider)
    assert [e.name for e in provider.endpoints] == ["a", "b"]
    assert provider.model == "m1" and provider.cooldown == 5.0


def test_usage_per_provider_sums_by_provider_as_it_rolls_up_and_crosses_the_wire() -> None:
    first = Usage.from_json(
        {
            "provider": "b",
            "llm_calls": 3,
            "by_provider": [
                {"provider": "a", "model": "m1", "llm_calls": 2, "prompt_tokens": 0},
                {
                    "provider": "b",
                    "model": "m2",
                    "llm_calls": 1,
                    "prompt_tokens": 10,
                    "cost_usd": 0.5,
                },
            ],
        }
    )
    second = Usage.from_json(
        {
            "provider": "a",
            "llm_calls": 1,
            "by_provider": [{"provider": "a", "model": "m1", "llm_calls": 1, "prompt_tokens": 7}],
        }
    )

    total = Usage.from_proto((first + second).to_proto())

    assert total.provider == "a" and total.llm_calls == 4
    assert total.by_provider == (
        ProviderUsage(provider="a", model="m1", llm_calls=3, prompt_tokens=7),
        ProviderUsage(provider="b", model="m2", llm_calls=1, prompt_tokens=10, cost_micros=500_000),
    )
    assert Usage.from_proto(Usage(provider="offline").to_proto()).by_provider == ()


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"BITWARE_PROVIDERS": '[{"name": "a", "model": "m"}]'},
            "granulator: BITWARE_PROVIDERS[0].base_url is required (a string)",
        ),
        (
            {"BITWARE_OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "BITWARE_OPENAI_STRUCTURED": "x"},
            "granulator: BITWARE_OPENAI_STRUCTURED='x' is not accepted: use "
            "auto, json_schema, json_object_schema, json_object, prompt",
        ),
    ],
)
def test_a_granulator_with_bad_provider_settings_says_so_in_one_line_and_exits_2(
    tmp_path: Path, variables: dict[str, str], line: str
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("BITWARE_", "OPENAI_"))}
    result = subprocess.run(
        [sys.executable, "-m", "granulator_server"],
        env={**environ, "BITWARE_DATA_DIR": str(tmp_path), **variables},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == line
