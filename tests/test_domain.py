"""The shared vocabulary (`bitware_core.domain`): values read back from every shape the JSON
columns hold, and cross the wire unchanged."""

from __future__ import annotations

from bitware_core.domain import ProviderUsage, Usage

#: A rolled-up usage as `money.add_usage` wrote it (stages, executions, KAM requests).
ROLLED_UP = {
    "prompt_tokens": 1000,
    "completion_tokens": 400,
    "worker_time_ms": 12,
    "llm_calls": 3,
    "model": "small-model",
    "provider": "backup",
    "by_provider": [
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
            "cost_usd": 0.0009,
            "llm_calls": 1,
        },
    ],
    "cost_micros": 900,
    "cost_usd": 0.0009,
}


def test_a_rolled_up_row_reads_back_and_is_written_in_the_same_shape() -> None:
    usage = Usage.from_json(ROLLED_UP)

    assert usage.cost_micros == 900 and usage.by_provider[1].cost_micros == 900
    assert usage.to_json() == ROLLED_UP
    assert list(usage.to_json()) == list(ROLLED_UP)


def test_older_shapes_read_back_zero_counters_left_out_cost_in_dollars_numbers_as_text() -> None:
    # An attempt's usage as the wire's non-zero fields; an event's with 64-bit numbers as text.
    assert Usage.from_json({"prompt_tokens": 30, "model": "m", "cost_usd": 0.003}) == Usage(
        prompt_tokens=30, model="m", cost_micros=3000
    )
    assert Usage.from_json({"completion_tokens": "15", "cost_micros": "7"}) == Usage(
        completion_tokens=15, cost_micros=7
    )
    assert Usage.from_json({}) == Usage.from_json(None) == Usage()
    assert Usage().to_json() == {} and not Usage() and Usage(provider="offline")


def test_usages_add_exactly_and_the_later_one_names_model_and_provider() -> None:
    first = Usage(prompt_tokens=1, model="a", provider="p", cost_micros=100_001)
    second = Usage(completion_tokens=2, llm_calls=1, cost_micros=200_002, provider="q")

    total = first + second

    assert total == Usage(
        prompt_tokens=1,
        completion_tokens=2,
        llm_calls=1,
        model="a",
        provider="q",
        cost_micros=300_003,
    )
    assert total.cost_usd == 0.300003
    assert first + Usage() == first == Usage() + first


def test_usage_crosses_the_wire_unchanged() -> None:
    usage = Usage.from_json(ROLLED_UP)

    assert Usage.from_proto(usage.to_proto()) == usage
    # A sender that set only cost_usd is read as that, rounded to the micro-dollar.
    message = usage.to_proto()
    message.cost_micros = 0
    assert Usage.from_proto(message).cost_micros == 900
    assert ProviderUsage.from_proto(usage.by_provider[1].to_proto()) == usage.by_provider[1]
