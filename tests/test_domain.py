"""The shared vocabulary (`bitware_core.domain`): values read back from every shape the JSON
columns hold, and cross the wire unchanged."""

from __future__ import annotations

from bitware_core.domain import (
    ExecutionStatus,
    JobStatus,
    ProviderUsage,
    Quality,
    RequestStatus,
    RetryPolicy,
    StageDefinition,
    StageError,
    StageOutcome,
    StageStatus,
    Usage,
    Violation,
)

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


def test_a_stored_retry_policy_reads_back_and_crosses_the_wire_unchanged() -> None:
    stored = {
        "max_attempts": 3,
        "initial_backoff_s": 0.5,
        "max_backoff_s": 10.0,
        "backoff_multiplier": 2.0,
        "non_retryable_errors": ["INVALID_INPUT", "BUDGET", "PERMISSION", "REFUSED", "TOO_LARGE"],
    }

    assert RetryPolicy.from_json(stored) == RetryPolicy()
    assert RetryPolicy().to_json() == stored
    custom = RetryPolicy(1, 0.25, 4.0, 3.0, ())
    assert RetryPolicy.from_proto(custom.to_proto()) == custom
    assert RetryPolicy.from_json(custom.to_json()) == custom


def test_a_policy_zeros_mean_the_defaults_only_once_resolved() -> None:
    given = RetryPolicy.from_proto(RetryPolicy(0, 0.0, 0.0, 0.0, ()).to_proto())

    assert given.max_attempts == 0  # KAM reports it as a field violation
    assert given.resolved() == RetryPolicy(1, 0.0, 10.0, 2.0, ())


def test_backoff_grows_is_capped_jittered_and_honours_the_hint() -> None:
    policy = RetryPolicy(initial_backoff_s=1.0, max_backoff_s=5.0, backoff_multiplier=2.0)

    for _ in range(50):
        assert 0.5 <= policy.backoff(1) <= 1.0
        assert 2.0 <= policy.backoff(3) <= 4.0
        assert 2.5 <= policy.backoff(10) <= 5.0
        assert policy.backoff(1, hint=30.0) == 30.0


def test_statuses_are_the_stored_strings_and_their_tables_name_every_member() -> None:
    assert StageStatus.RETRY_WAIT == "retry_wait" and f"{JobStatus.COMPLETED}" == "completed"
    assert [str(s) for s in RequestStatus] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    assert {s for s in ExecutionStatus if s.terminal} == {"succeeded", "failed", "cancelled"}
    for kind in (RequestStatus, ExecutionStatus, StageStatus):
        for status in kind:
            assert all(isinstance(to, kind) for to in kind if status.can_move_to(to))


def test_moves_follow_the_tables() -> None:
    assert ExecutionStatus.FAILED.can_move_to(ExecutionStatus.QUEUED)  # RetryExecution
    assert not ExecutionStatus.SUCCEEDED.can_move_to(ExecutionStatus.QUEUED)
    assert StageStatus.RUNNING.can_move_to(StageStatus.QUEUED)  # declined, or lease expired
    assert not StageStatus.PENDING.can_move_to(StageStatus.RUNNING)
    assert RequestStatus.RUNNING.can_move_to(RequestStatus.PENDING)  # execution refused
    assert not RequestStatus.CANCELLED.can_move_to(RequestStatus.RUNNING)


#: A generate attempt's outcome as the granulator stored it in its job's `result`.
STORED_RESULT = {
    "job_id": "job_1",
    "output": {"job_id": "job_1", "structure_type": "course", "quality_score": 81.5},
    "quality": {
        "score": 81.5,
        "components": {"completeness": 1.0, "structure": 0.5},
        "feedback": "add lessons",
        "violations": [{"path": "/modules/0", "rule": "count_range", "message": "too few"}],
        "below_threshold": False,
        "integrity_failed": False,
        "accept_below_minimum": True,
    },
    "usage": ROLLED_UP,
    "metrics": {"elements": 12.0},
}


def test_stored_outcomes_read_back_and_are_written_in_the_same_shape() -> None:
    result = StageOutcome.from_json(STORED_RESULT)
    failure = {
        "error": {
            "error_class": "TRANSIENT",
            "reason": "RATE_LIMITED",
            "message": "slow down",
            "retry_after": 2.0,
        },
        "usage": {},
    }
    cancelled = {"cancelled": True, "usage": {}}

    assert result.quality.violations == (Violation("/modules/0", "count_range", "too few"),)
    assert result.to_json() == STORED_RESULT
    assert StageOutcome.from_json(failure).to_json() == failure
    assert StageOutcome.from_json(cancelled).to_json() == cancelled
    assert StageOutcome.from_json(failure).error == StageError(
        "TRANSIENT", "RATE_LIMITED", "slow down", 2.0
    )


def test_outcomes_cross_the_wire_unchanged() -> None:
    result = StageOutcome.from_json(STORED_RESULT)
    failure = StageOutcome.failed(StageError("INVALID_INPUT", "BAD", "no", 0.5), Usage(llm_calls=1))

    assert StageOutcome.from_proto(result.to_proto()) == result
    assert StageOutcome.from_proto(failure.to_proto()) == failure


def test_a_quality_without_the_stage_flags_reads_them_false() -> None:
    quality = Quality.from_json({"score": 40, "components": {}, "feedback": "", "violations": []})

    assert quality == Quality(score=40.0)
    assert Quality(score=90, integrity_failed=True).rank() < Quality(score=10).rank()
    assert Quality(accept_below_minimum=True).deliverable_below_minimum
    assert not Quality(accept_below_minimum=True, integrity_failed=True).deliverable_below_minimum


def test_a_stored_stage_definition_reads_back_and_crosses_the_wire_unchanged() -> None:
    stored = {
        "order": 1,
        "name": "generate",
        "capability": "granulate",
        "action": "generate",
        "structure_template": "course",
        "params": {"judge_level": "1"},
        "timeout_s": 120.0,
        "retry_policy": RetryPolicy().to_json(),
        "min_quality_score": 60.0,
        "review_again_below_quality": False,
    }
    stage = StageDefinition.from_json(stored)

    assert stage.to_json() == stored
    assert StageDefinition.from_proto(stage.to_proto()) == stage
    # A stage as KAM stored it before the flag existed.
    older = {k: v for k, v in stored.items() if k != "review_again_below_quality"}
    assert StageDefinition.from_json(older) == stage
