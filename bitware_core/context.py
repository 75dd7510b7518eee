"""What travels with a call across every hop: the request id, the execution id and the deadline.

The server interceptor sets these from incoming metadata; `bitware_core.channels` puts them on
every outgoing call; the log formatter prints the ids on every line.
"""

from __future__ import annotations

import contextvars
import time

REQUEST_ID_HEADER = "x-request-id"
EXECUTION_ID_HEADER = "x-execution-id"

#: The id of the end-user request being served.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
#: The execution being worked on, if any.
execution_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("execution_id", default="")
#: When the call being served must end (time.monotonic()), if the caller set a deadline.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "deadline", default=None
)


def timeout(limit: float) -> float:
    """The timeout for a downstream call: `limit`, or less if the caller's deadline is sooner."""
    deadline = deadline_var.get()
    if deadline is None:
        return limit
    return max(0.001, min(limit, deadline - time.monotonic()))
