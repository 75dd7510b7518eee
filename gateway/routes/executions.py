"""Executions on the orchestrator: list, read, cancel, retry, and the live event stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from bitware.granulator.v1 import granulator_pb2
from bitware.orchestrator.v1 import orchestrator_pb2
from gateway.calls import CallDep, enum_value, reply
from gateway.errors import ERROR_RESPONSES, InvalidInput
from gateway.models import CancelExecutionBody, ExecutionStatus, Int32
from gateway.schemas import returns, schema_of
from gateway.sse import EventStreamResponse, WatchCall, execution_events

router = APIRouter(prefix="/api/executions", tags=["executions"])

#: How long one event stream may stay open; the browser then resumes with Last-Event-ID.
WATCH_TIMEOUT = 3600.0

_FINISHED = frozenset(
    {
        orchestrator_pb2.EXECUTION_STATUS_SUCCEEDED,
        orchestrator_pb2.EXECUTION_STATUS_FAILED,
        orchestrator_pb2.EXECUTION_STATUS_CANCELLED,
    }
)


@router.get("", responses=returns(orchestrator_pb2.ListExecutionsResponse, "A page"))
async def list_executions(
    call: CallDep,
    page_size: Annotated[Int32, Query(description="At most this many (default 50).")] = 0,
    page_token: Annotated[str, Query(description="The previous page's next_page_token.")] = "",
    status: ExecutionStatus | None = None,
    client_id: Annotated[str, Query(description="Only this client's (admins, support).")] = "",
) -> JSONResponse:
    """Lists executions, newest first, without stage outputs."""
    message = orchestrator_pb2.ListExecutionsRequest(
        page_size=page_size,
        page_token=page_token,
        status=enum_value(orchestrator_pb2.ExecutionStatus, "EXECUTION_STATUS_", status),
        client_id=client_id,
    )
    return reply(await call(call.up.orchestrator.ListExecutions, message))


@router.get(
    "/{execution_id}",
    responses=returns(orchestrator_pb2.GetExecutionResponse, "With stages, attempts and cost"),
)
async def get_execution(execution_id: str, call: CallDep) -> JSONResponse:
    """Returns an execution with its stages, attempts, usage and cost."""
    message = orchestrator_pb2.GetExecutionRequest(execution_id=execution_id)
    return reply(await call(call.up.orchestrator.GetExecution, message))


@router.post(
    "/{execution_id}/cancel",
    responses=returns(orchestrator_pb2.CancelExecutionResponse, "The execution, cancelled"),
)
async def cancel_execution(
    execution_id: str, call: CallDep, body: Annotated[CancelExecutionBody | None, Body()] = None
) -> JSONResponse:
    """Cancels an execution; a running stage's worker is told to stop."""
    message = orchestrator_pb2.CancelExecutionRequest(
        execution_id=execution_id, reason=body.reason if body else ""
    )
    return reply(await call(call.up.orchestrator.CancelExecution, message))


@router.post(
    "/{execution_id}/retry",
    responses=returns(orchestrator_pb2.RetryExecutionResponse, "The execution, queued again"),
)
async def retry_execution(execution_id: str, call: CallDep) -> JSONResponse:
    """Re-runs a failed execution from its failed stage (admins; clients retry the request,
    `POST /api/requests/{request_id}/retry`, which charges the retry)."""
    message = orchestrator_pb2.RetryExecutionRequest(execution_id=execution_id)
    return reply(await call(call.up.orchestrator.RetryExecution, message))


@router.get(
    "/{execution_id}/calls",
    responses=returns(granulator_pb2.ListModelCallsResponse, "Every job's model calls, in order"),
)
async def list_execution_calls(
    execution_id: str,
    call: CallDep,
    page_size: Annotated[Int32, Query(description="At most this many (default 50).")] = 0,
    page_token: Annotated[str, Query(description="The previous page's next_page_token.")] = "",
) -> JSONResponse:
    """Lists the model calls of every job of an execution (every stage and attempt), in order."""
    # Asked first so that an unknown or foreign execution answers 404, not an empty list.
    await call(
        call.up.orchestrator.GetExecution,
        orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
    )
    message = granulator_pb2.ListModelCallsRequest(
        execution_id=execution_id, page_size=page_size, page_token=page_token
    )
    return reply(await call.granulator(lambda g: g.ListModelCalls, message))


def _resume_after(last_event_id: str | None, after: int | None) -> int:
    # A reconnecting EventSource sends Last-Event-ID on the same URL, so the header wins.
    if last_event_id is None or not last_event_id.strip():
        return after or 0
    text = last_event_id.strip()
    if not text.isdigit():
        raise InvalidInput("header Last-Event-ID", "must be a non-negative integer")
    return int(text)


_EVENTS_RESPONSES = {
    **ERROR_RESPONSES,
    200: {
        "description": (
            "`text/event-stream`: one event per log entry, `id:` its sequence, `event:` its type "
            "without the EVENT_TYPE_ prefix (for example EXECUTION_SUCCEEDED), `data:` the "
            "ExecutionEvent as JSON; a final `event: error` carries an error body if the "
            "upstream fails. The stream ends after the terminal event."
        ),
        "content": {"text/event-stream": {"schema": schema_of(orchestrator_pb2.ExecutionEvent)}},
    },
    204: {"description": "The execution has finished and nothing follows the resume position."},
}


@router.get(
    "/{execution_id}/events", response_class=EventStreamResponse, responses=_EVENTS_RESPONSES
)
async def execution_event_stream(
    execution_id: str,
    request: Request,
    call: CallDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, description="Resume after this sequence (Last-Event-ID wins).")
    ] = None,
) -> Response:
    """Server-Sent Events of the execution's ordered event log: history first, then live."""
    start = _resume_after(last_event_id, after)
    # Asked first so that an unknown or foreign execution answers a plain 404 before streaming.
    execution = (
        await call(
            call.up.orchestrator.GetExecution,
            orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
        )
    ).execution
    if execution.status in _FINISHED and execution.last_sequence <= start:
        return Response(status_code=204)  # tells EventSource to stop reconnecting

    def open_stream() -> WatchCall:
        watch = orchestrator_pb2.WatchExecutionRequest(
            execution_id=execution_id, after_sequence=start, batched=True
        )
        return call.stream(call.up.orchestrator.WatchExecution, watch, WATCH_TIMEOUT)

    return EventStreamResponse(execution_events(open_stream, request.app.state.metrics))
