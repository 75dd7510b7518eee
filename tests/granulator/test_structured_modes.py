"""Structured-output modes against local OpenAI-compatible servers that each take only some of
them (as llama.cpp, vLLM, Ollama and LM Studio do): `auto` finds the one that works, sends a
rejected format once per endpoint and never retries it as an outage; every mode's reply is
validated and re-asked; lenient parsing; optional sampling parameters; OPENAI_* variables."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bitware_core.config import OpenAISettings, Settings
from granulator_server.errors import ProviderRejected
from granulator_server.pricing import PriceTable
from granulator_server.providers import choose_provider, formats
from granulator_server.providers.openai_chat import OpenAIProvider
from granulator_server.providers.replies import ReplyError, estimate_tokens, parse_object
from tests.granulator.fake_openai import (
    LLAMA_CPP_REJECTION,
    FakeOpenAI,
    failure,
    reply,
    request_mode,
)
from tests.granulator.test_openai_provider import COURSE, SPEC, VALID, provider

SCHEMA_TEXT = json.dumps(COURSE.json_schema, separators=(",", ":"))


def modes_sent(fake: FakeOpenAI) -> list[str]:
    return [request_mode(request) for request in fake.requests]


@pytest.mark.parametrize(
    ("accepted", "rejection"),
    [
        ("json_schema", failure(400, "never used")),
        ("json_object_schema", LLAMA_CPP_REJECTION),
        ("json_object", failure(422, "response_format: 'schema' is not permitted")),
        ("prompt", failure(400, "unsupported request")),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_auto_finds_the_one_mode_a_server_takes_and_keeps_it(
    fake_openai: FakeOpenAI, accepted: str, rejection: Any, stream: bool
) -> None:
    fake_openai.only_modes, fake_openai.rejection = {accepted}, rejection
    fake_openai.add(reply(VALID), reply(VALID))
    generator = provider(fake_openai, stream=stream)

    first = await generator.generate(COURSE, SPEC, "")
    second = await generator.generate(COURSE, SPEC, "")

    assert first.document == second.document == VALID
    tried = list(formats.MODES[: formats.MODES.index(accepted) + 1])
    assert modes_sent(fake_openai) == [*tried, accepted]  # each rejected mode sent once
    assert first.usage.llm_calls == len(tried) and second.usage.llm_calls == 1
    assert [call.mode for call in first.calls] == tried
    final = fake_openai.requests[-1]
    if accepted == "json_schema":
        sent = json.dumps(final["response_format"]["json_schema"]["schema"])
        assert "maxItems" in sent and "maxLength" not in sent  # OpenAI's strict subset
        assert SCHEMA_TEXT not in final["messages"][0]["content"]
    else:  # every weaker mode carries the schema in the system prompt
        assert SCHEMA_TEXT in final["messages"][0]["content"]
    if accepted == "json_object_schema":
        # The grammar without string lengths, which llama.cpp cannot parse at these sizes.
        grammar = formats.strict_subset(COURSE.json_schema)
        assert final["response_format"] == {"type": "json_object", "schema": grammar}
        assert "maxItems" in json.dumps(grammar) and "maxLength" not in json.dumps(grammar)
    assert final["max_tokens"] == 4096


async def test_llama_cpp_500_on_json_schema_is_not_retried_as_an_outage(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.only_modes = {"json_object_schema", "json_object", "prompt"}
    fake_openai.rejection = LLAMA_CPP_REJECTION
    fake_openai.add(*(reply(VALID) for _ in range(3)))
    generator = provider(fake_openai, max_retries=2)

    with caplog.at_level(logging.WARNING, "bitware.granulator.openai"):
        for _ in range(3):
            await generator.generate(COURSE, SPEC, "")

    assert modes_sent(fake_openai).count("json_schema") == 1
    assert len(fake_openai.requests) == 4
    settled = [r for r in caplog.records if "structured output" in r.getMessage()]
    assert len(settled) == 1 and "json_object_schema" in settled[0].getMessage()
    assert "response_format" in settled[0].getMessage()


async def test_a_configured_mode_the_server_rejects_fails_once_as_invalid_input(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.only_modes, fake_openai.rejection = {"json_object_schema"}, LLAMA_CPP_REJECTION

    with pytest.raises(ProviderRejected) as raised:
        await provider(fake_openai, structured="json_schema").generate(COURSE, SPEC, "")

    assert raised.value.reason == "FORMAT_REJECTED"
    assert raised.value.error_class == "INVALID_INPUT"
    assert "BITWARE_OPENAI_STRUCTURED=auto" in raised.value.message
    assert raised.value.usage.llm_calls == 1
    assert len(fake_openai.requests) == 1


async def test_a_configured_mode_is_the_only_one_sent(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(VALID))

    await provider(fake_openai, structured="prompt").generate(COURSE, SPEC, "")

    assert modes_sent(fake_openai) == ["prompt"]
    assert "response_format" not in fake_openai.requests[0]


async def test_a_400_in_every_mode_is_the_request_not_the_format(fake_openai: FakeOpenAI) -> None:
    fake_openai.only_modes = set()
    fake_openai.rejection = failure(400, "maximum context length is 2048 tokens")
    generator = provider(fake_openai)

    with pytest.raises(ProviderRejected) as raised:
        await generator.generate(COURSE, SPEC, "")

    assert raised.value.reason == "PROVIDER_BAD_REQUEST"
    assert "context length" in raised.value.message
    assert modes_sent(fake_openai) == list(formats.MODES)
    assert generator.endpoints[0].modes.current() == "json_schema"  # nothing learnt


async def test_a_500_that_does_not_name_the_format_is_an_outage(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(failure(500, "out of memory"), reply(VALID))
    generator = provider(fake_openai)

    await generator.generate(COURSE, SPEC, "")

    assert modes_sent(fake_openai) == ["json_schema", "json_schema"]


@pytest.mark.parametrize("mode", formats.MODES)
async def test_every_mode_validates_the_reply_and_re_asks_with_the_errors(
    fake_openai: FakeOpenAI, mode: str
) -> None:
    broken = {k: v for k, v in VALID.items() if k != "summary"}
    fake_openai.add(reply(broken), reply(VALID))
    generator = provider(fake_openai, structured=mode)

    generation = await generator.generate(COURSE, SPEC, "")

    assert generation.document == VALID
    assert modes_sent(fake_openai) == [mode, mode]
    assert "'summary' is a required property" in fake_openai.requests[1]["messages"][-1]["content"]


async def test_judge_in_prompt_mode_re_asks_a_verdict_that_breaks_its_schema(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(
        reply({"ratings": {"overall": "good"}, "feedback": ""}),
        reply({"ratings": {"overall": 7}, "feedback": "Fine."}),
    )

    judgement = await provider(fake_openai, structured="prompt").judge(COURSE, SPEC, VALID, 1)

    assert judgement is not None and judgement.score == 70.0
    assert "is not of type 'number'" in fake_openai.requests[1]["messages"][-1]["content"]


async def test_every_call_is_recorded_with_mode_reason_and_tokens(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.only_modes, fake_openai.rejection = {"json_object"}, failure(400, "json_schema?")
    fake_openai.add(reply("{", prompt_tokens=11, completion_tokens=1), reply(VALID))
    generator = provider(fake_openai)

    calls = (await generator.generate(COURSE, SPEC, "")).calls

    assert [(c.mode, c.why) for c in calls] == [
        ("json_schema", "first"),
        ("json_object_schema", "FORMAT_REJECTED"),
        ("json_object", "FORMAT_REJECTED"),
        ("json_object", "INVALID_JSON"),
    ]
    assert calls[0].error.startswith("400") and calls[2].error == ""
    assert (calls[2].prompt_tokens, calls[2].completion_tokens, calls[2].content) == (11, 1, "{")
    assert calls[3].request == fake_openai.requests[3]
    assert all(c.latency_s > 0 and c.endpoint == "openai" for c in calls)


def test_raw_control_characters_and_text_around_the_object_parse() -> None:
    assert parse_object('{"title": "line one\nline two\ttab"}') == {
        "title": "line one\nline two\ttab"
    }
    assert parse_object('Here is the JSON:\n{"a": 1}\nHope it helps!') == {"a": 1}
    with pytest.raises(ReplyError, match="not valid JSON"):
        parse_object('{"a": 1')
    with pytest.raises(ReplyError, match="not valid JSON"):
        parse_object("no JSON here")


async def test_reply_with_raw_newlines_in_strings_is_accepted(fake_openai: FakeOpenAI) -> None:
    text = json.dumps(VALID).replace(VALID["summary"], "First line.\nSecond line.")
    assert "\n" in text
    fake_openai.add(reply(text))

    generation = await provider(fake_openai).generate(COURSE, SPEC, "")

    assert generation.document["summary"] == "First line.\nSecond line."
    assert len(fake_openai.requests) == 1


async def test_plain_reply_without_usage_is_estimated_not_free(fake_openai: FakeOpenAI) -> None:
    fake_openai.add(reply(VALID, include_usage=False))

    generation = await provider(fake_openai, stream=False).generate(COURSE, SPEC, "")

    assert generation.usage.completion_tokens == estimate_tokens(json.dumps(VALID))
    assert generation.usage.prompt_tokens > 100


async def test_penalties_are_sent_and_dropped_for_an_endpoint_that_rejects_them(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(
        failure(400, "Unrecognized request argument supplied: repeat_penalty"),
        reply(VALID),
        reply(VALID),
    )
    generator = provider(fake_openai, frequency_penalty=0.2, extra_body={"repeat_penalty": 1.1})

    await generator.generate(COURSE, SPEC, "")
    await generator.generate(COURSE, SPEC, "")

    first, second, third = fake_openai.requests
    assert (first["frequency_penalty"], first["repeat_penalty"]) == (0.2, 1.1)
    assert "repeat_penalty" not in second and "repeat_penalty" not in third
    assert third["frequency_penalty"] == 0.2  # only the parameter named is dropped
    assert modes_sent(fake_openai) == ["json_schema"] * 3


def test_standard_openai_variables_stand_in_for_unset_bitware_ones() -> None:
    standard = {"OPENAI_API_KEY": "sk-standard", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}

    fallback = Settings.from_env(standard)
    preferred = Settings.from_env(
        {**standard, "BITWARE_OPENAI_API_KEY": "sk-own", "BITWARE_OPENAI_BASE_URL": ""}
    )

    assert (fallback.openai.api_key, fallback.openai.base_url) == (
        "sk-standard",
        "http://127.0.0.1:9/v1",
    )
    assert (preferred.openai.api_key, preferred.openai.base_url) == ("sk-own", "")
    assert isinstance(choose_provider(fallback, PriceTable()), OpenAIProvider)


def test_bad_structured_setting_is_refused_with_the_choices() -> None:
    settings = Settings(openai=OpenAISettings(api_key="sk-test", structured="grammar"))

    with pytest.raises(ValueError, match="auto, json_schema, json_object_schema"):
        choose_provider(settings, PriceTable())


async def test_stream_options_are_dropped_for_an_endpoint_that_rejects_them(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.add(
        failure(400, "Unrecognized request argument supplied: stream_options"),
        reply(VALID, include_usage=False),
    )
    generator = provider(fake_openai, stream=True, extra_body={"repeat_penalty": 1.1})

    generation = await generator.generate(COURSE, SPEC, "")

    first, second = fake_openai.requests
    assert first["stream_options"] == {"include_usage": True} and first["stream"] is True
    assert "stream_options" not in second and second["stream"] is True
    assert second["repeat_penalty"] == 1.1  # only the parameter named is dropped
    assert modes_sent(fake_openai) == ["json_schema", "json_schema"]
    assert generation.usage.completion_tokens == estimate_tokens(json.dumps(VALID))
    assert [call.request for call in generation.calls] == fake_openai.requests


async def test_a_stream_without_usage_counts_a_token_per_piece_like_llama_cpp(
    fake_openai: FakeOpenAI,
) -> None:
    verdict = json.dumps({"ratings": {"overall": 6}, "feedback": "Short."})
    fake_openai.add(reply(verdict, pieces=len(verdict), include_usage=False))

    judgement = await provider(fake_openai, stream=True).judge(COURSE, SPEC, VALID, 1)

    assert judgement is not None
    assert judgement.usage.completion_tokens == len(verdict)  # one piece, one token
    assert len(verdict) > estimate_tokens(verdict)
