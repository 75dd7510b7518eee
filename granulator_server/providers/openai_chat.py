"""The `openai` provider: chat completions through the official `openai` client against any
OpenAI-compatible endpoint (base URL, key, model, timeout and retries from `Settings`).

One stage's generation, as a loop over model calls (every call's tokens go to one `UsageMeter`,
and every call passes through `_send`, which writes its `CallRecord`):

- The structured-output mode (`providers.formats`): `json_schema` (strict) first, unless
  `BITWARE_OPENAI_STRUCTURED` names one. In `auto`, a 400, or a 422/5xx whose body names the
  `response_format`, makes the same request go out at once in the next weaker mode; a rejection
  is never retried as if it were an outage, and the mode that works is remembered per endpoint
  and model. Whatever the mode, the reply is parsed and validated here.
- The reply streams (`stream_options.include_usage`) so that progress can count the elements
  produced so far; `stream=False` makes one plain call instead. A server that sends no usage
  has its tokens estimated from the text rather than recorded as free.
- Malformed JSON (Markdown fences are stripped first) or JSON-schema violations: the model is
  re-asked, at most `max_reasks` times, with the reply and the errors it must fix.
- `finish_reason=length`: a truncated reply is never continued by appending; the same request is
  sent once more with `truncation_factor` times the token budget, then it fails as
  INVALID_OUTPUT / TRUNCATED.
- A refusal or `finish_reason=content_filter` fails as REFUSED (never retried).
- 429, 5xx, timeouts and connection errors are retried up to `max_retries` times by this loop
  (the client's own retries are off so that every attempt is counted and `Retry-After` is
  honoured); then the stage fails as TRANSIENT with the last `retry_after`.
- `frequency_penalty` and `extra_body` (e.g. llama.cpp's `repeat_penalty`) are sent when
  configured; an endpoint whose 400/422 names one of them is asked again without them, and they
  are not sent to it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from bitware_core.config import Settings
from granulator_server.domain import StructureTemplate, build_prompt
from granulator_server.errors import (
    InvalidOutput,
    ProviderMisconfigured,
    ProviderRefused,
    ProviderRejected,
    ProviderTransient,
)
from granulator_server.pricing import PriceTable
from granulator_server.providers import formats, judging
from granulator_server.providers.base import (
    CallRecord,
    Generation,
    Judgement,
    ProgressCallback,
    UsageMeter,
)
from granulator_server.providers.formats import Message, ModeMemory
from granulator_server.providers.replies import (
    ElementCounter,
    ReplyError,
    estimate_tokens,
    parse_object,
    retry_after,
    schema_problems,
)

log = logging.getLogger("bitware.granulator.openai")
_MAX_ERROR_LINES = 15


@dataclass(frozen=True)
class Reply:
    """One model answer: its text, refusal text and why it stopped."""

    content: str
    refusal: str
    finish_reason: str


@dataclass(frozen=True)
class _Failure:
    """What a failed call means: `kind` is `format` (the structured-output request was
    rejected), `extras` (an optional parameter was), `transient` (retry), or `misconfigured` /
    `rejected` (fail the stage)."""

    kind: str
    reason: str = ""
    message: str = ""
    wait: float | None = None
    #: For `format`: the body named the format, so the rejection is certain.
    certain: bool = False


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        base_url: str = "",
        api_key: str = "",
        timeout: float = 60.0,
        max_retries: int = 2,
        prices: PriceTable | None = None,
        stream: bool = True,
        structured: str = formats.AUTO,
        max_output_tokens: int = 4096,
        frequency_penalty: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        truncation_factor: int = 2,
        max_reasks: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.timeout = timeout
        self.max_retries = max_retries
        self.prices = prices or PriceTable()
        self.stream = stream
        self.modes = ModeMemory(structured)
        self.max_output_tokens = max_output_tokens
        #: Optional sampling parameters; emptied when the endpoint rejects them.
        self.extras: dict[str, Any] = dict(extra_body or {})
        if frequency_penalty:
            self.extras["frequency_penalty"] = frequency_penalty
        self.truncation_factor = truncation_factor
        #: Set once the endpoint sent a reply without usage (said in the log once).
        self._estimating = False
        self.max_reasks = max_reasks
        self.backoff, self.max_backoff, self.max_retry_wait = backoff, max_backoff, max_retry_wait
        # Local endpoints often need no key, but the client insists on one.
        self.client = AsyncOpenAI(
            api_key=api_key or "no-key",
            base_url=self.base_url,
            timeout=timeout,
            max_retries=0,
        )

    @classmethod
    def from_settings(cls, settings: Settings, prices: PriceTable) -> OpenAIProvider:
        return cls(
            model=settings.openai_model,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
            prices=prices,
            structured=settings.openai_structured,
            max_output_tokens=settings.openai_max_output_tokens,
            frequency_penalty=settings.openai_frequency_penalty,
            extra_body=settings.openai_extra_body_json(),
        )

    @property
    def key(self) -> tuple[str, str]:
        """What a structured-output mode is remembered for."""
        return self.base_url, self.model

    async def close(self) -> None:
        await self.client.close()

    async def generate(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        feedback: str,
        on_progress: ProgressCallback | None = None,
    ) -> Generation:
        meter = UsageMeter(self.name, self.model, self.prices)
        system, user = build_prompt(
            template,
            spec["topic"],
            spec.get("audience", ""),
            int(spec["granularity"]),
            dict(spec.get("constraints", {})),
            dict(spec.get("options", {})),
            feedback,
        )
        messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        schema = template.json_schema
        document = await self.ask_json(
            messages,
            f"{template.structure_type}_structure",
            schema,
            lambda value: schema_problems(schema, value),
            self.max_output_tokens,
            meter,
            on_progress,
        )
        return Generation(document, meter.as_dict(), tuple(meter.calls))

    async def judge(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        document: dict[str, Any],
        level: int,
    ) -> Judgement | None:
        meter = UsageMeter(self.name, self.model, self.prices)
        messages, schema = judging.request(template, spec, document, level)
        verdict = await self.ask_json(
            messages,
            "judgement",
            schema,
            lambda value: schema_problems(schema, value),
            min(1024, self.max_output_tokens),
            meter,
            None,
        )
        score, criteria, feedback = judging.read(verdict, level)
        return Judgement(score, criteria, feedback, meter.as_dict())

    async def ask_json(
        self,
        messages: list[Message],
        schema_name: str,
        schema: dict[str, Any],
        problems_of: Callable[[dict[str, Any]], list[str]],
        budget: int,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        """A JSON object with no problems (`problems_of`), re-asking with the problems found
        at most `max_reasks` times; raises InvalidOutput after that."""
        truncated, reasks, why = False, 0, "first"
        while True:
            reply = await self.complete(
                messages, schema_name, schema, budget, meter, on_progress, why
            )
            if reply.finish_reason == "length":
                if truncated:
                    raise InvalidOutput(
                        "TRUNCATED",
                        f"the reply was cut off at {budget} tokens, even with a larger budget",
                        usage=meter.as_dict(),
                    )
                # Never continue a cut-off reply: ask again from scratch with more room.
                truncated, budget, why = True, budget * self.truncation_factor, "TRUNCATED"
                continue
            try:
                document = parse_object(reply.content)
            except ReplyError as error:
                reason, problems = "INVALID_JSON", [str(error)]
            else:
                problems = problems_of(document)
                if not problems:
                    return document
                reason = "SCHEMA_VIOLATION"
            if reasks >= self.max_reasks:
                raise InvalidOutput(
                    reason,
                    f"no valid structure after {reasks + 1} replies: " + "; ".join(problems[:5]),
                    usage=meter.as_dict(),
                )
            reasks, why = reasks + 1, reason
            messages = [*messages, *_reask(reply.content, problems)]

    async def complete(
        self,
        messages: list[Message],
        schema_name: str,
        schema: dict[str, Any],
        max_tokens: int,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
        why: str = "first",
    ) -> Reply:
        """One answer, with transient failures retried, rejected formats stepped down from and
        refusals raised; every call counted."""
        mode = self.modes.current(self.key)
        rejections: list[str] = []
        failures = 0
        while True:
            shaped, response_format = formats.shape(mode, messages, schema_name, schema)
            request = self._request(shaped, response_format, max_tokens)
            try:
                reply = await self._send(request, mode, why, meter, on_progress)
            except (TimeoutError, openai.APIError) as error:
                failure = self._classify(error, mode)
            else:
                if rejections:
                    self.modes.worked(self.key, mode, rejections)
                if reply.refusal or reply.finish_reason == "content_filter":
                    raise ProviderRefused(
                        "CONTENT_FILTERED" if not reply.refusal else "REFUSED",
                        reply.refusal or "the provider's content filter stopped the reply",
                        usage=meter.as_dict(),
                    )
                return reply
            if failure.kind == "misconfigured":
                raise ProviderMisconfigured(failure.reason, failure.message, usage=meter.as_dict())
            if failure.kind == "rejected":
                raise ProviderRejected(failure.reason, failure.message, usage=meter.as_dict())
            if failure.kind == "extras":
                log.warning(
                    "the endpoint rejected optional parameters; sending none from now on",
                    extra={"endpoint": self.base_url, "parameters": sorted(self.extras)},
                )
                self.extras, why = {}, "PARAMETERS_REJECTED"
                continue
            if failure.kind == "format":
                if failure.certain:
                    self.modes.rejected(self.key, mode)
                weaker = self.modes.weaker(mode)
                if weaker is None:  # a mode named by configuration
                    raise ProviderRejected(
                        "FORMAT_REJECTED",
                        f"the endpoint rejected structured-output mode {mode} ({failure.message}); "
                        "BITWARE_OPENAI_STRUCTURED=auto finds one it takes",
                        usage=meter.as_dict(),
                    )
                rejections.append(f"{mode}: {failure.message[:200]}")
                mode, why = weaker, "FORMAT_REJECTED"
                continue
            failures += 1
            delay = failure.wait if failure.wait is not None else self._backoff(failures)
            if failures > self.max_retries or delay > self.max_retry_wait:
                raise ProviderTransient(
                    failure.reason,
                    f"{failure.message} (after {failures} attempts)",
                    retry_after=delay,
                    usage=meter.as_dict(),
                )
            log.info("retrying the model call", extra={"reason": failure.reason, "delay_s": delay})
            why = failure.reason
            await asyncio.sleep(delay)

    def _classify(self, error: TimeoutError | openai.APIError, mode: str) -> _Failure:
        """What a failed call means."""
        if isinstance(error, TimeoutError | openai.APITimeoutError):
            return _Failure("transient", "PROVIDER_TIMEOUT", f"no reply in {self.timeout}s")
        if not isinstance(error, openai.APIStatusError):  # connection errors, broken streams
            return _Failure("transient", "PROVIDER_UNREACHABLE", error.message)
        status, text = error.status_code, _describe(error)
        if status in (400, 422) and any(name in text for name in self.extras):
            return _Failure("extras", message=text)
        if (
            mode != "prompt"
            and formats.names_format(text)
            and (status in (400, 422) or status >= 500)
        ):
            return _Failure("format", message=text, certain=True)
        if mode != "prompt" and status == 400 and self.modes.auto:
            # A 400 that does not say why: perhaps the format. The weaker mode is remembered
            # only once it works (if every mode gets a 400, the request itself is wrong).
            return _Failure("format", message=text)
        if status in (401, 403, 404):
            return _Failure("misconfigured", "PROVIDER_MISCONFIGURED", text)
        if status == 429 or status >= 500:
            reason = "RATE_LIMITED" if status == 429 else "PROVIDER_UNAVAILABLE"
            return _Failure("transient", reason, text, retry_after(error.response.headers))
        # Any other 4xx: the request itself is wrong.
        reason = "PROVIDER_BAD_REQUEST" if status == 400 else "PROVIDER_REJECTED"
        return _Failure("rejected", reason, text)

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))

    def _request(
        self, messages: list[Message], response_format: dict[str, Any] | None, max_tokens: int
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            **self.extras,
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if response_format is not None:
            request["response_format"] = response_format
        return request

    async def _send(
        self,
        request: dict[str, Any],
        mode: str,
        why: str,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
    ) -> Reply:
        """The one place every model call passes through: sends `request`, counts the call and
        its tokens (estimated when the server sends none) and writes its `CallRecord`."""
        meter.call()
        record = CallRecord(self.base_url, self.model, mode, why, request, time.time())
        started = time.monotonic()
        received = ElementCounter()  # what a streamed reply has brought so far
        try:
            async with asyncio.timeout(self.timeout):
                reply, tokens = await (
                    self._stream(request, on_progress, received)
                    if self.stream
                    else self._once(request)
                )
        except asyncio.CancelledError:
            # The attempt was stopped (a cancel or the stage's timeout) before the server said
            # what this call used: what was sent and what arrived is counted, estimated.
            prompt = sum(estimate_tokens(m["content"]) for m in request["messages"])
            record.prompt_tokens, record.completion_tokens = prompt, estimate_tokens(received.text)
            record.estimated, record.error = True, "cancelled"
            meter.add_tokens(record.prompt_tokens, record.completion_tokens)
            raise
        except (TimeoutError, openai.APIError) as error:
            record.error = (
                f"no reply in {self.timeout}s"
                if isinstance(error, TimeoutError)
                else _describe(error)
            )
            raise
        finally:
            record.latency_s = time.monotonic() - started
            meter.calls.append(record)
        if tokens is None:
            # The server sent no usage: an estimate keeps the budget honest rather than
            # recording the call as free.
            if not self._estimating:
                self._estimating = True
                log.warning("the endpoint sends no usage; estimating tokens from the text")
            prompt = sum(estimate_tokens(m["content"]) for m in request["messages"])
            tokens = prompt, estimate_tokens(reply.content)
            record.estimated = True
        record.prompt_tokens, record.completion_tokens = tokens
        record.content, record.finish_reason = reply.content, reply.finish_reason
        meter.add_tokens(*tokens)
        return reply

    async def _once(self, request: dict[str, Any]) -> tuple[Reply, tuple[int, int] | None]:
        response = await self.client.chat.completions.create(**_client_args(request))
        usage = response.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None
        if not response.choices:
            return Reply("", "", "stop"), tokens
        choice = response.choices[0]
        reply = Reply(
            choice.message.content or "", choice.message.refusal or "", choice.finish_reason or ""
        )
        return reply, tokens

    async def _stream(
        self,
        request: dict[str, Any],
        on_progress: ProgressCallback | None,
        counter: ElementCounter,
    ) -> tuple[Reply, tuple[int, int] | None]:
        stream = await self.client.chat.completions.create(
            **_client_args(request), stream=True, stream_options={"include_usage": True}
        )
        refusal: list[str] = []
        finish, tokens = "", None
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices[:1]:
                    if choice.delta.content:
                        before = counter.count
                        if counter.feed(choice.delta.content) > before and on_progress:
                            on_progress(counter.count)
                    if choice.delta.refusal:
                        refusal.append(choice.delta.refusal)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        finally:
            await stream.close()
        return Reply(counter.text, "".join(refusal), finish), tokens


def _reask(content: str, problems: list[str]) -> list[Message]:
    shown = problems[:_MAX_ERROR_LINES]
    if len(problems) > len(shown):
        shown.append(f"... and {len(problems) - len(shown)} more")
    listed = "\n".join(f"- {problem}" for problem in shown)
    return [
        {"role": "assistant", "content": content},
        {
            "role": "user",
            "content": "That reply cannot be used:\n"
            f"{listed}\n"
            "Reply again with the whole JSON object, conforming to the schema, with no "
            "Markdown and no text around it.",
        },
    ]


def _client_args(request: dict[str, Any]) -> dict[str, Any]:
    # The client takes only the parameters it knows by name; the rest (llama.cpp's
    # `repeat_penalty`, the `schema` inside `response_format`) goes in the body as given.
    body = {k: v for k, v in request.items() if k not in ("model", "messages")}
    return {"model": request["model"], "messages": request["messages"], "extra_body": body}


def _describe(error: openai.APIError) -> str:
    status = getattr(error, "status_code", None)
    return f"{status}: {error.message}" if status else error.message
