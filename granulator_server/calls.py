"""The record of every model call, kept with its job (the `model_calls` table).

The `openai` provider writes a `CallRecord` for each call at the one place every call passes
through; the stage runner hands the records of an attempt to `store` when the attempt ends
(completed, failed or cancelled), before `Process` answers. `list_calls` reads a job's or an
execution's calls, scoped to the caller's client like the jobs themselves.

Bounded: every text (each message, the reply, the error, the response format) is cut to
`MAX_TEXT` characters with a note of how much was cut, and the call is marked `truncated`; at
most `MAX_CALLS` calls are kept per job (the job's usage still counts them all). Never kept: API
keys or any header (the record holds only the JSON body sent, and the endpoint by its name).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bitware_core.auth import Principal
from bitware_core.db import next_page_token, page_window
from bitware_core.sql import Tx, insert_rows
from granulator_server import jobs, models
from granulator_server.providers.base import CallRecord

MAX_TEXT = 16_000
MAX_CALLS = 30
#: Request fields kept in their own columns; every other field is a parameter.
_OWN_FIELDS = frozenset({"model", "messages", "response_format"})


def _cut(text: str, cut: list[bool]) -> str:
    if len(text) <= MAX_TEXT:
        return text
    cut.append(True)
    return f"{text[:MAX_TEXT]}… [cut: {len(text) - MAX_TEXT} more characters]"


def row_of(call: CallRecord, cost_usd: float) -> dict[str, Any]:
    """A call as a `model_calls` row (without job and sequence), its texts bounded."""
    cut: list[bool] = []
    request = call.request
    response_format = request.get("response_format")
    messages = [
        {"role": str(m.get("role", "")), "content": _cut(str(m.get("content") or ""), cut)}
        for m in request.get("messages", [])
    ]
    tokens = call.prompt_tokens, call.completion_tokens
    return {
        "started_at": datetime.fromtimestamp(call.started_at, UTC).replace(tzinfo=None),
        "endpoint": call.endpoint,
        "model": call.model,
        "format_mode": call.mode,
        "why": call.why,
        "parameters": {k: v for k, v in request.items() if k not in _OWN_FIELDS},
        "response_format": _cut(json.dumps(response_format), cut) if response_format else "",
        "messages": messages,
        "reply": _cut(call.content, cut),
        "finish_reason": call.finish_reason,
        "error": _cut(call.error, cut),
        "latency_ms": int(call.latency_s * 1000),
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "tokens_estimated": call.estimated,
        "cost_usd": cost_usd,
        "truncated": bool(cut),
    }


def store(tx: Tx, job_id: str, rows: Iterable[dict[str, Any]]) -> None:
    """Keeps calls (`row_of`) as the job's next ones, up to `MAX_CALLS` for the job. Numbered
    here, so a job resumed after an interrupted run goes on from its last call."""
    (last,) = tx.one(
        "SELECT COALESCE(MAX(sequence), 0) FROM model_calls WHERE job_id = :job_id",
        {"job_id": job_id},
    )
    kept = [
        {**row, "job_id": job_id, "sequence": sequence}
        for sequence, row in enumerate(rows, start=last + 1)
        if sequence <= MAX_CALLS
    ]
    insert_rows(tx, models.ModelCall, kept)


Row = tuple[models.ModelCall, models.Job]


def list_calls(
    session: Session,
    principal: Principal,
    *,
    job_id: str,
    execution_id: str,
    page_size: int,
    page_token: str,
) -> tuple[list[Row], str]:
    """The calls of one job, or of every job of one execution (oldest job first), in the order
    they were made. A job of another client is not found; an execution's list holds only the
    caller's jobs."""
    offset, limit = page_window(page_size, page_token)
    query = select(models.ModelCall, models.Job).join(
        models.Job, models.Job.id == models.ModelCall.job_id
    )
    if job_id:
        jobs.get(session, principal, job_id)  # another client's job is not found
        query = query.where(models.ModelCall.job_id == job_id)
    else:
        query = query.where(models.Job.execution_id == execution_id)
        if not principal.sees_all_clients:
            query = query.where(models.Job.client_id == principal.client_id)
    query = query.order_by(models.Job.created_at, models.Job.id, models.ModelCall.sequence)
    rows = [(call, job) for call, job in session.execute(query.offset(offset).limit(limit + 1))]
    return rows[:limit], next_page_token(offset, limit, len(rows))
