"""Reading a model's reply: stripping Markdown fences, parsing JSON (leniently: small local
models write raw control characters inside strings and chat around the object), checking it
against a JSON schema, counting elements in a partial reply for live progress, estimating tokens
a server did not count, and reading a `Retry-After` header."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from granulator_server.domain.validation import schema_errors

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
# Keys that title an element in the six structures (see domain.elements); counting them in the
# text streamed so far tells how many elements the model has produced, without parsing.
_TITLE_KEY = re.compile(r'"(?:title|prompt|name|text)"\s*:')


class ReplyError(ValueError):
    """The reply is not one JSON object."""


def strip_fences(text: str) -> str:
    """The content of a ```json … ``` block when the whole reply is one; else the text itself."""
    match = _FENCE.match(text)
    return match.group(1) if match else text.strip()


def parse_object(text: str) -> dict[str, Any]:
    """The JSON object in a reply, fences removed. Raises ReplyError with the parser's reason.

    Raw control characters (a newline inside a string) are accepted (`strict=False`), and when
    the reply is not JSON as a whole, the text from its first `{` to its last `}` is tried (a
    model without a JSON mode often writes "Here is the JSON:" first)."""
    body = strip_fences(text)
    if not body:
        raise ReplyError("the reply is empty")
    try:
        value = json.loads(body, strict=False)
    except json.JSONDecodeError as error:
        start, end = body.find("{"), body.rfind("}")
        inner = body[start : end + 1] if 0 <= start < end else ""
        if not inner or inner == body:
            raise ReplyError(f"the reply is not valid JSON: {error}") from None
        try:
            value = json.loads(inner, strict=False)
        except json.JSONDecodeError:
            raise ReplyError(f"the reply is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ReplyError(f"the reply is a JSON {type(value).__name__}, not an object")
    return value


def schema_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """Every way `value` breaks `schema`, as `/json/pointer: message`, in document order."""
    return [f"{path or '/'}: {message}" for path, message in schema_errors(schema, value)]


def estimate_tokens(text: str) -> int:
    """Tokens in `text` when the server did not say: about four characters a token (English,
    BPE tokenizers), at least one for any text."""
    return -(-len(text) // 4)


def elements_so_far(partial: str) -> int:
    """How many titled elements a partial JSON reply holds (approximate, never decreasing)."""
    return len(_TITLE_KEY.findall(partial))


class ElementCounter:
    """`elements_so_far` over a growing text, scanning each part once: the search resumes
    after the last key found, so a key split across two pieces is counted when it completes."""

    def __init__(self) -> None:
        self.text = ""
        self.count = 0
        #: How many pieces came: each streamed piece carries at least one token.
        self.pieces = 0
        self._resume = 0

    def feed(self, piece: str) -> int:
        self.text += piece
        self.pieces += 1
        for match in _TITLE_KEY.finditer(self.text, self._resume):
            self.count += 1
            self._resume = match.end()
        return self.count

    def tokens(self) -> int:
        """The reply's tokens when the server does not say: the pieces counted (llama.cpp
        streams one token a piece) or the text's estimate, whichever is more."""
        return max(self.pieces, estimate_tokens(self.text))


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
