"""What happens around every HTTP request: the request id (taken from `x-request-id` or made
here, passed upstream, logged, echoed back), one log line, the metrics, and the last-resort error
body for a bug in the gateway itself."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bitware_core import tracing
from bitware_core.context import REQUEST_ID_HEADER, request_id_var
from gateway.errors import error_body
from gateway.metrics import Metrics

log = logging.getLogger("bitware.gateway")

# A caller's id is kept only if it is short and plain; anything else could forge log fields.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == REQUEST_ID_HEADER.encode():
            text = bytes(value).decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex[:16]


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        status = 0
        started = time.perf_counter()

        async def tagged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        parent = (
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if tracing.enabled()
            else None
        )
        attributes = {"http.request.method": scope["method"], "url.path": scope.get("path", "")}
        with tracing.span(scope["method"], "server", parent, attributes) as span:
            try:
                await self.app(scope, receive, tagged_send)
            except Exception:
                # Every known failure is mapped by gateway.errors; reaching here is a gateway bug.
                log.exception("unhandled error", extra={"path": scope.get("path", "")})
                if status == 0:
                    body = error_body("INTERNAL", "the gateway failed; its log has the details")
                    await JSONResponse(body, status_code=500)(scope, receive, tagged_send)
            finally:
                route = scope.get("route")
                template = (
                    route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else ""
                )
                elapsed = time.perf_counter() - started
                self.metrics.observe(scope["method"], template or "unmatched", status, elapsed)
                if span is not None:  # named by route template, as HTTP server spans are
                    span.update_name(f"{scope['method']} {template or 'unmatched'}")
                    span.set_attributes(
                        {"http.route": template, "http.response.status_code": status}
                    )
                log.info(
                    "http request",
                    extra={
                        "method": scope["method"],
                        "path": scope.get("path", ""),
                        "status": status,
                        "ms": round(elapsed * 1000, 1),
                    },
                )
                request_id_var.reset(token)
