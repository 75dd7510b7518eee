"""The `openai` provider: chat completions through the official `openai` client against any
OpenAI-compatible endpoint (base URL, key, model, timeout and retries from `Settings`).

One stage's generation, as a loop over model calls (every call's tokens go to one `UsageMeter`):

- Structured outputs first (`response_format` `json_schema`, strict). An endpoint that answers
  400 to that is asked again in JSON mode (`json_object`) with the schema in the system prompt,
  and is not offered `json_schema` again by this process; we then validate the reply ourselves.
- The reply streams (`stream_options.include_usage`) so that progress can count the elements
  produced so far; `stream=False` makes one plain call instead.
- Malformed JSON (Markdown fences are stripped first) or JSON-schema violations: the model is
  re-asked, at most `max_reasks` times, with the reply and the errors it must fix.
- `finish_reason=length`: a truncated reply is never continued by appending; the same request is
  sent once more with `truncation_factor` times the token budget, then it fails as
  INVALID_OUTPUT / TRUNCATED.
- A refusal or `finish_reason=content_filter` fails as REFUSED (never retried).
- 429, 5xx, timeouts and connection errors are retried up to `max_retries` times by this loop
  (the client's own retries are off so that every attempt is counted and `Retry-After` is
  honoured); then the stage fails as TRANSIENT with the last `retry_after`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import openai
from openai import AsyncOpenAI

from bitware_core.config import Settings
from granulator_server.domain import StructureTemplate, build_prompt, validate
from granulator_server.errors import (
    InvalidOutput,
    ProviderMisconfigured,
    ProviderRefused,
    ProviderRejected,
    ProviderTransient,
)
from granulator_server.pricing import PriceTable
from granulator_server.providers import judging
from granulator_server.providers.base import Generation, Judgement, ProgressCallback, UsageMeter
from granulator_server.providers.replies import (
    ElementCounter,
    ReplyError,
    parse_object,
    retry_after,
)

log = logging.getLogger("bitware.granulator.openai")
Message = dict[str, str]
_MAX_ERROR_LINES = 15


@dataclass(frozen=True)
class Reply:
    """One model answer: its text, refusal text and why it stopped."""

    content: str
    refusal: str
    finish_reason: str


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
        max_output_tokens: int = 4096,
        truncation_factor: int = 2,
        max_reasks: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.prices = prices or PriceTable()
        self.stream = stream
        self.max_output_tokens = max_output_tokens
        self.truncation_factor = truncation_factor
        self.max_reasks = max_reasks
        self.backoff, self.max_backoff, self.max_retry_wait = backoff, max_backoff, max_retry_wait
        #: False once the endpoint rejected `json_schema`; JSON mode from then on.
        self.structured = True
        # Local endpoints often need no key, but the client insists on one.
        self.client = AsyncOpenAI(
            api_key=api_key or "no-key",
            base_url=base_url or None,
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
        )

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
        granularity = int(spec["granularity"])
        system, user = build_prompt(
            template,
            spec["topic"],
            spec.get("audience", ""),
            granularity,
            dict(spec.get("constraints", {})),
            dict(spec.get("options", {})),
            feedback,
        )
        messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        schema_name = f"{template.structure_type}_structure"
        budget, truncated, reasks = self.max_output_tokens, False, 0
        while True:
            reply = await self.complete(
                messages, schema_name, template.json_schema, budget, meter, on_progress
            )
            if reply.finish_reason == "length":
                if truncated:
                    raise InvalidOutput(
                        "TRUNCATED",
                        f"the reply was cut off at {budget} tokens, even with a larger budget",
                        usage=meter.as_dict(),
                    )
                # Never continue a cut-off reply: ask again from scratch with more room.
                truncated, budget = True, budget * self.truncation_factor
                continue
            try:
                document = parse_object(reply.content)
            except ReplyError as error:
                reason, problems = "INVALID_JSON", [str(error)]
            else:
                problems = [
                    f"{v.path or '/'}: {v.message}"
                    for v in validate(template, document, granularity)
                    if v.rule == "schema"
                ]
                if not problems:
                    return Generation(document, meter.as_dict())
                reason = "SCHEMA_VIOLATION"
            if reasks >= self.max_reasks:
                raise InvalidOutput(
                    reason,
                    f"no valid structure after {reasks + 1} replies: " + "; ".join(problems[:5]),
                    usage=meter.as_dict(),
                )
            reasks += 1
            messages = [*messages, *_reask(reply.content, problems)]

    async def judge(
        self,
        template: StructureTemplate,
        spec: dict[str, Any],
        document: dict[str, Any],
        level: int,
    ) -> Judgement | None:
        meter = UsageMeter(self.name, self.model, self.prices)
        messages, schema = judging.request(template, spec, document, level)
        reply = await self.complete(messages, "judgement", schema, 1024, meter, None)
        verdict = judging.read(reply.content, level)
        if verdict is None:
            raise InvalidOutput(
                "INVALID_JUDGEMENT", "the judge's reply is not a verdict", usage=meter.as_dict()
            )
        score, criteria, feedback = verdict
        return Judgement(score, criteria, feedback, meter.as_dict())

    async def complete(
        self,
        messages: list[Message],
        schema_name: str,
        schema: dict[str, Any],
        max_tokens: int,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
    ) -> Reply:
        """One answer, with transient failures retried and refusals raised; every call counted."""
        failures = 0
        while True:
            meter.call()
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._call(
                        self._request(messages, schema_name, schema, max_tokens),
                        meter,
                        on_progress,
                    )
            except openai.BadRequestError as error:
                if self.structured:
                    log.warning("endpoint rejected json_schema; using JSON mode", exc_info=error)
                    self.structured = False
                    continue
                raise ProviderRejected(
                    "PROVIDER_BAD_REQUEST", _describe(error), usage=meter.as_dict()
                ) from error
            except (
                openai.AuthenticationError,
                openai.PermissionDeniedError,
                openai.NotFoundError,
            ) as error:
                raise ProviderMisconfigured(
                    "PROVIDER_MISCONFIGURED", _describe(error), usage=meter.as_dict()
                ) from error
            except (openai.RateLimitError, openai.InternalServerError) as error:
                reason = "RATE_LIMITED" if error.status_code == 429 else "PROVIDER_UNAVAILABLE"
                wait = retry_after(error.response.headers)
                message = _describe(error)
            except openai.APIStatusError as error:  # other 4xx: the request itself is wrong
                raise ProviderRejected(
                    "PROVIDER_REJECTED", _describe(error), usage=meter.as_dict()
                ) from error
            except (TimeoutError, openai.APITimeoutError):
                reason, wait, message = "PROVIDER_TIMEOUT", None, f"no reply in {self.timeout}s"
            except openai.APIError as error:  # connection errors, errors inside a stream
                reason, wait, message = "PROVIDER_UNREACHABLE", None, _describe(error)
            else:
                if reply.refusal or reply.finish_reason == "content_filter":
                    raise ProviderRefused(
                        "CONTENT_FILTERED" if not reply.refusal else "REFUSED",
                        reply.refusal or "the provider's content filter stopped the reply",
                        usage=meter.as_dict(),
                    )
                return reply
            failures += 1
            delay = wait if wait is not None else self._backoff(failures)
            if failures > self.max_retries or delay > self.max_retry_wait:
                raise ProviderTransient(
                    reason,
                    f"{message} (after {failures} attempts)",
                    retry_after=delay,
                    usage=meter.as_dict(),
                )
            log.info("retrying the model call", extra={"reason": reason, "delay_s": delay})
            await asyncio.sleep(delay)

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))

    def _request(
        self, messages: list[Message], schema_name: str, schema: dict[str, Any], max_tokens: int
    ) -> dict[str, Any]:
        if self.structured:
            response_format: dict[str, Any] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            }
        else:
            # JSON mode does not know the schema, so the prompt carries it.
            response_format = {"type": "json_object"}
            first = messages[0]
            messages = [
                {
                    "role": first["role"],
                    "content": f"{first['content']}\n\nThe JSON must conform to this JSON "
                    f"schema:\n{json.dumps(schema, separators=(',', ':'))}",
                },
                *messages[1:],
            ]
        return {
            "model": self.model,
            "messages": messages,
            "response_format": response_format,
            "max_tokens": max_tokens,
        }

    async def _call(
        self, request: dict[str, Any], meter: UsageMeter, on_progress: ProgressCallback | None
    ) -> Reply:
        if not self.stream:
            response = await self.client.chat.completions.create(**request)
            if response.usage is not None:
                meter.add_tokens(response.usage.prompt_tokens, response.usage.completion_tokens)
            if not response.choices:
                return Reply("", "", "stop")
            choice = response.choices[0]
            return Reply(
                choice.message.content or "",
                choice.message.refusal or "",
                choice.finish_reason or "",
            )
        stream = await self.client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        counter = ElementCounter()
        refusal: list[str] = []
        finish, counted = "", False
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    meter.add_tokens(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    counted = True
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
        if not counted:
            # The endpoint ignored include_usage; an estimate (four characters a token) keeps
            # the budget honest rather than recording the call as free.
            log.warning("the stream carried no usage; estimating tokens")
            prompt_chars = sum(len(m["content"]) for m in request["messages"])
            meter.add_tokens(prompt_chars // 4, len(counter.text) // 4)
        return Reply(counter.text, "".join(refusal), finish)


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
            "Reply again with the whole structure as one JSON object that conforms to the "
            "schema, with no Markdown and no text around it.",
        },
    ]


def _describe(error: openai.APIError) -> str:
    status = getattr(error, "status_code", None)
    return f"{status}: {error.message}" if status else error.message
