"""Structured-output modes: how one request asks an OpenAI-compatible server for JSON.

OpenAI-compatible servers each accept a different subset of `response_format`, so the provider
knows four modes, strongest first:

- ``json_schema``: `{"type": "json_schema", "json_schema": {..., "strict": true}}` (OpenAI,
  vLLM, LM Studio);
- ``json_object_schema``: `{"type": "json_object", "schema": …}`, which llama.cpp's servers
  turn into a grammar;
- ``json_object``: JSON mode, with the schema in the system prompt;
- ``prompt``: no `response_format` at all, the schema in the system prompt.

Whatever the mode, the provider parses and validates the reply itself. `BITWARE_OPENAI_STRUCTURED`
picks one mode, or ``auto``: start with the strongest and step down when the server rejects one
(`ModeMemory` remembers the working mode per endpoint and model for the life of the process).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

log = logging.getLogger("bitware.granulator.openai")

Message = dict[str, str]
MODES = ("json_schema", "json_object_schema", "json_object", "prompt")
AUTO = "auto"
CHOICES = (AUTO, *MODES)
_NOT_STRICT = frozenset({"minLength", "maxLength"})

# What servers write when they reject a response_format (llama-cpp-python answers 500 with a
# pydantic error naming `response_format`; others 400 or 422 naming the type they lack).
_NAMES_FORMAT = re.compile(r"response_format|json_schema|json_object|structured output", re.I)


def check(mode: str) -> str:
    """The mode, or ValueError naming the choices."""
    if mode not in CHOICES:
        raise ValueError(f"structured output mode {mode!r} is not one of {', '.join(CHOICES)}")
    return mode


def names_format(body: str) -> bool:
    """Whether an error body blames the structured-output request."""
    return bool(_NAMES_FORMAT.search(body))


def shape(
    mode: str, messages: list[Message], schema_name: str, schema: dict[str, Any]
) -> tuple[list[Message], dict[str, Any] | None]:
    """The messages and `response_format` (None: send none) of one request in `mode`."""
    if mode == "json_schema":
        strict = {"name": schema_name, "schema": strict_subset(schema), "strict": True}
        return messages, {"type": "json_schema", "json_schema": strict}
    if mode == "json_object_schema":
        # The grammar holds the reply to the schema, but the model still needs its field
        # descriptions to fill it in sensibly: the prompt carries the schema too. String lengths
        # stay out of the grammar: llama.cpp spells `maxLength: 700` as 700 nested optional
        # characters, and its grammar parser then aborts the whole server process ("number of
        # rules ... exceeds sane defaults"). The reply is checked against them anyway.
        grammar = strict_subset(schema)
        return _with_schema(messages, schema), {"type": "json_object", "schema": grammar}
    if mode == "json_object":
        return _with_schema(messages, schema), {"type": "json_object"}
    return _with_schema(messages, schema), None


def strict_subset(schema: Any) -> Any:
    """`schema` without the keywords OpenAI's strict mode refuses (string lengths)."""
    if isinstance(schema, dict):
        return {k: strict_subset(v) for k, v in schema.items() if k not in _NOT_STRICT}
    if isinstance(schema, list):
        return [strict_subset(v) for v in schema]
    return schema


def _with_schema(messages: list[Message], schema: dict[str, Any]) -> list[Message]:
    first = messages[0]
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    content = (
        f"{first['content']}\n\nThe JSON must conform to this JSON schema:\n{text}\n"
        "Reply with the JSON object only: no Markdown, no text before or after it."
    )
    return [{"role": first["role"], "content": content}, *messages[1:]]


class ModeMemory:
    """The working mode of one endpoint and model: `configured` when it names a mode, else the
    strongest mode the endpoint has not rejected. Logs once per mode when a weaker mode first
    works. Shared by the concurrent stages of one process (hence the lock)."""

    def __init__(self, configured: str = AUTO, label: str = "") -> None:
        self.configured = check(configured)
        #: Names the endpoint and model in the log.
        self.label = label
        self._mode = MODES[0] if self.auto else configured
        self._announced: set[str] = set()
        self._lock = threading.Lock()

    @property
    def auto(self) -> bool:
        return self.configured == AUTO

    def current(self) -> str:
        with self._lock:
            return self._mode

    def weaker(self, mode: str) -> str | None:
        """The mode to try after the endpoint rejected `mode`; None when there is none (the
        last mode, or a configured one)."""
        index = MODES.index(mode) + 1
        return MODES[index] if self.auto and index < len(MODES) else None

    def rejected(self, mode: str) -> None:
        """The endpoint said plainly that it does not take `mode`: never offer it again."""
        following = self.weaker(mode)
        if following is not None:
            self._lower(following)

    def worked(self, mode: str, rejections: list[str]) -> None:
        """A reply came in `mode` after the stronger modes were rejected (`rejections`, the
        servers' words): remember it and say so once."""
        if not self.auto or mode == MODES[0]:
            return
        self._lower(mode)
        with self._lock:
            if mode in self._announced:
                return
            self._announced.add(mode)
        log.warning(
            "structured output for %s: %s (rejected: %s)",
            self.label,
            mode,
            "; ".join(rejections) or "earlier",
            extra={"endpoint": self.label, "mode": mode},
        )

    def _lower(self, mode: str) -> None:
        # Never back to a stronger mode: a rejection is a property of the server.
        with self._lock:
            if MODES.index(mode) > MODES.index(self._mode):
                self._mode = mode
