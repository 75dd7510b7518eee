"""Structured logs: one line per event, key=value text or JSON, carrying the request and
execution ids of the current call so one id finds a request's whole path through the mesh."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from bitware_core.context import execution_id_var, request_id_var

_RESERVED = set(vars(logging.makeLogRecord({})))


class _Formatter(logging.Formatter):
    def __init__(self, service: str, as_json: bool) -> None:
        super().__init__()
        self.service = service
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "event": record.getMessage(),
        }
        fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())


class CallContext(logging.Filter):
    """Stamps each record with the ids of the call being served, when it is emitted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if request_id := request_id_var.get():
            record.request_id = request_id
        if execution_id := execution_id_var.get():
            record.execution_id = execution_id
        return True


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text


def configure(
    service: str, *, as_json: bool = False, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Sends this process's logs to stderr (or `stream`), one line per event."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(service, as_json))
    handler.addFilter(CallContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
