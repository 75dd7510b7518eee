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
  has its tokens estimated (pieces streamed, or the text) rather than recorded as free.
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
  configured, and `stream_options` when streaming; an endpoint whose 400/422 names one of them
  is asked again without it, and it is not sent to that endpoint again.
- Several endpoints (`providers.endpoints`, `BITWARE_PROVIDERS`): each call goes to the first
  one that is not cooling down. After `failures_before_cooldown` transient failures in a row an
  endpoint cools down for `cooldown` seconds and the call moves on to the next; it is used again
  once its cool-down is over. The usage names the endpoint of each call (`by_provider`).
- Pacing: what an endpoint's headers say (`retry-after`, `x-ratelimit-remaining-requests` /
  `-tokens` with `x-ratelimit-reset-*`) holds its next calls back until it has room; a wait
  longer than `max_retry_wait` skips to another endpoint, or fails the stage as TRANSIENT with
  that `retry_after`. Failures the server gave no wait for back off exponentially.
- Concurrency: at most `max_calls` calls are in flight at once, over all endpoints (a call is
  mostly waiting on the network, so a granulator holds hundreds); more wait their turn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client import CollectorRegistry

from bitware_core import tracing
from bitware_core.config import Settings
from granulator_server.domain import StructureTemplate, build_prompt
from granulator_server.errors import (
    ContentFiltered,
    FormatRejected,
    InvalidJson,
    InvalidOutput,
    ProviderBadRequest,
    ProviderMisconfigured,
    ProviderRateLimited,
    ProviderRefused,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
    SchemaViolation,
    StageFailure,
    TruncatedOutput,
)
from granulator_server.pricing import PriceTable
from granulator_server.providers import formats, judging
from granulator_server.providers.base import (
    CallRecord,
    Generation,
    Judgement,
    ModelMetrics,
    ProgressCallback,
    UsageMeter,
)
from granulator_server.providers.endpoints import EndpointConfig, Health, parse_providers
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
_JUDGE_TOKENS = 1024
DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Reply:
    """One model answer: its text, refusal text, why it stopped and the budget it had."""

    content: str
    refusal: str
    finish_reason: str
    max_tokens: int = 0


@dataclass(frozen=True)
class _Failure:
    """What a failed call means: `kind` is `format` (the structured-output request was
    rejected), `extras` (an optional parameter was), `transient` (retry), or `misconfigured` /
    `rejected` (fail the stage); `error` is what the stage fails with (not for `format` and
    `extras`, which are handled here)."""

    kind: str
    error: type[StageFailure] = StageFailure
    message: str = ""
    wait: float | None = None
    #: For `format`: the body named the format, so the rejection is certain.
    certain: bool = False


class Endpoint:
    """One endpoint at run time: its client, structured-output mode, optional parameters and
    health."""

    def __init__(self, config: EndpointConfig, timeout: float, stream: bool) -> None:
        self.config = config
        self.name, self.model = config.name, config.model
        self.base_url = config.base_url or DEFAULT_BASE_URL
        # Local endpoints often need no key, but the client insists on one.
        self.client = AsyncOpenAI(
            api_key=config.api_key or "no-key",
            base_url=self.base_url,
            timeout=timeout,
            max_retries=0,
        )
        self.modes = ModeMemory(config.structured, f"{self.model} at {self.name} ({self.base_url})")
        self.stream = stream
        #: Optional request parameters; each is dropped when the endpoint rejects it by name.
        self.extras: dict[str, Any] = dict(config.extra_body)
        if config.frequency_penalty:
            self.extras["frequency_penalty"] = config.frequency_penalty
        if stream:  # usage in the last chunk; some servers refuse the option
            self.extras["stream_options"] = {"include_usage": True}
        self.health = Health()
        #: Set once the endpoint sent a reply without usage (said in the log once).
        self.estimating = False


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        model: str = "",
        base_url: str = "",
        api_key: str = "",
        structured: str = formats.AUTO,
        max_output_tokens: int = 4096,
        frequency_penalty: float = 0.0,
        extra_body: dict[str, Any] | None = None,
        endpoints: list[EndpointConfig] | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        prices: PriceTable | None = None,
        stream: bool = True,
        truncation_factor: int = 2,
        max_reasks: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_wait: float = 30.0,
        failures_before_cooldown: int = 3,
        cooldown: float = 60.0,
        max_calls: int = 256,
        metrics: ModelMetrics | None = None,
    ) -> None:
        """One endpoint named `openai` from `model`, `base_url`, … or, when given, `endpoints`
        in order of preference. At most `max_calls` model calls are in flight at once. Calls
        are counted in `metrics` (a registry of their own when none is given)."""
        if max_calls < 1:
            raise ValueError(f"BITWARE_MAX_MODEL_CALLS must be at least 1, got {max_calls}")
        configs = endpoints or [
            EndpointConfig(
                name=self.name,
                base_url=base_url,
                model=model,
                api_key=api_key,
                structured=structured,
                max_output_tokens=max_output_tokens,
                frequency_penalty=frequency_penalty,
                extra_body=dict(extra_body or {}),
            )
        ]
        self.endpoints = [Endpoint(config, timeout, stream) for config in configs]
        self.max_calls = max_calls
        self._in_flight = asyncio.Semaphore(max_calls)
        self.model = self.endpoints[0].model
        self.timeout = timeout
        self.max_retries = max_retries
        self.prices = prices or PriceTable()
        self.truncation_factor = truncation_factor
        self.max_reasks = max_reasks
        self.backoff, self.max_backoff, self.max_retry_wait = backoff, max_backoff, max_retry_wait
        self.failures_before_cooldown, self.cooldown = failures_before_cooldown, cooldown
        self.metrics = metrics or ModelMetrics(CollectorRegistry())

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        prices: PriceTable,
        environ: Mapping[str, str] | None = None,
        metrics: ModelMetrics | None = None,
    ) -> OpenAIProvider:
        """Raises ValueError for settings that do not make sense (named in the message)."""
        default = EndpointConfig(
            name=cls.name,
            base_url=settings.openai.base_url,
            model=settings.openai.model,
            api_key=settings.openai.api_key,
            structured=_checked("BITWARE_OPENAI_STRUCTURED", settings.openai.structured),
            max_output_tokens=settings.openai.max_output_tokens,
            frequency_penalty=settings.openai.frequency_penalty,
            extra_body=settings.openai.extra_body_json(),
        )
        endpoints = (
            parse_providers(
                settings.providers.endpoints, os.environ if environ is None else environ, default
            )
            if settings.providers.endpoints.strip()
            else [default]
        )
        return cls(
            endpoints=endpoints,
            timeout=settings.openai.timeout,
            max_retries=settings.openai.max_retries,
            prices=prices,
            failures_before_cooldown=settings.providers.failures,
            cooldown=settings.providers.cooldown,
            max_calls=settings.granulator.max_model_calls,
            metrics=metrics,
        )

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()

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
            meter,
            on_progress,
        )
        # ask_json returns only a document without schema problems.
        return Generation(document, meter.usage(), tuple(meter.calls), schema_checked=True)

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
            meter,
            None,
            max_tokens=_JUDGE_TOKENS,
        )
        score, criteria, feedback = judging.read(verdict, level)
        return Judgement(score, criteria, feedback, meter.usage())

    async def ask_json(
        self,
        messages: list[Message],
        schema_name: str,
        schema: dict[str, Any],
        problems_of: Callable[[dict[str, Any]], list[str]],
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        """A JSON object with no problems (`problems_of`), re-asking with the problems found
        at most `max_reasks` times; raises InvalidOutput after that. `max_tokens` caps the
        endpoint's own reply budget."""
        scale, reasks, why = 1, 0, "first"
        while True:
            reply = await self.complete(
                messages, schema_name, schema, meter, on_progress, why, scale, max_tokens
            )
            if reply.finish_reason == "length":
                if scale > 1:
                    raise TruncatedOutput(
                        f"the reply was cut off at {reply.max_tokens} tokens, even with "
                        f"{scale}× the budget",
                        usage=meter.usage(),
                    )
                # Never continue a cut-off reply: ask again from scratch with more room.
                scale, why = self.truncation_factor, "TRUNCATED"
                continue
            failed: type[InvalidOutput]
            try:
                document = parse_object(reply.content)
            except ReplyError as error:
                failed, problems = InvalidJson, [str(error)]
            else:
                problems = problems_of(document)
                if not problems:
                    return document
                failed = SchemaViolation
            if reasks >= self.max_reasks:
                raise failed(
                    f"no valid structure after {reasks + 1} replies: " + "; ".join(problems[:5]),
                    usage=meter.usage(),
                )
            reasks, why = reasks + 1, failed.reason
            messages = [*messages, *_reask(reply.content, problems)]

    async def complete(
        self,
        messages: list[Message],
        schema_name: str,
        schema: dict[str, Any],
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
        why: str = "first",
        scale: int = 1,
        max_tokens: int | None = None,
    ) -> Reply:
        """One answer from the first endpoint that can give it: transient failures retried
        (and moved to the next endpoint when one cools down), calls paced by the endpoint's
        rate-limit headers, rejected formats stepped down from, refusals raised; every call
        counted. The reply budget is the endpoint's, capped at `max_tokens`, times `scale`."""
        endpoint: Endpoint | None = None
        mode, rejections = "", list[str]()  # of the endpoint in use
        failures, spent = 0, 0  # transient failures: on the endpoint in use, in all
        while True:
            now = time.monotonic()
            chosen = self._pick(now)
            if chosen is not endpoint:
                if endpoint is not None:
                    log.warning(
                        "moving model calls from %s to %s",
                        endpoint.name,
                        chosen.name,
                        extra={"from": endpoint.name, "to": chosen.name},
                    )
                endpoint, mode, rejections, failures = chosen, chosen.modes.current(), [], 0
            shaped, response_format = formats.shape(mode, messages, schema_name, schema)
            budget = endpoint.config.max_output_tokens
            if max_tokens is not None:
                budget = min(budget, max_tokens)
            request = self._request(endpoint, shaped, response_format, budget * scale)
            need = sum(estimate_tokens(m["content"]) for m in shaped) + request["max_tokens"]
            wait = endpoint.health.wait(need, now)
            if wait > self.max_retry_wait:
                raise ProviderRateLimited(
                    f"{endpoint.name} has no room for {wait:.1f}s (its rate-limit headers)",
                    retry_after=wait,
                    usage=meter.usage(),
                )
            if wait > 0:
                log.info("pacing model calls", extra={"endpoint": endpoint.name, "delay_s": wait})
                await asyncio.sleep(wait)
            endpoint.health.spend(need, time.monotonic())
            try:
                reply = await self._send(endpoint, request, mode, why, meter, on_progress)
            except (TimeoutError, openai.APIError) as error:
                failure = self._classify(endpoint, error, mode)
            else:
                endpoint.health.succeeded()
                if rejections:
                    endpoint.modes.worked(mode, rejections)
                if reply.refusal or reply.finish_reason == "content_filter":
                    refused = ProviderRefused if reply.refusal else ContentFiltered
                    raise refused(
                        reply.refusal or "the provider's content filter stopped the reply",
                        usage=meter.usage(),
                    )
                return reply
            if failure.kind in ("misconfigured", "rejected"):
                raise failure.error(failure.message, usage=meter.usage())
            if failure.kind == "extras":
                rejected = sorted(name for name in endpoint.extras if name in failure.message)
                log.warning(
                    "%s rejected %s; not sending it from now on",
                    endpoint.name,
                    ", ".join(rejected),
                    extra={"endpoint": endpoint.name, "parameters": rejected},
                )
                for name in rejected:
                    endpoint.extras.pop(name, None)
                why = "PARAMETERS_REJECTED"
                continue
            if failure.kind == "format":
                if failure.certain:
                    endpoint.modes.rejected(mode)
                weaker = endpoint.modes.weaker(mode)
                if weaker is None:  # a mode named by configuration
                    raise FormatRejected(
                        f"{endpoint.name} rejected structured-output mode {mode} "
                        f"({failure.message}); BITWARE_OPENAI_STRUCTURED=auto finds one it takes",
                        usage=meter.usage(),
                    )
                rejections.append(f"{mode}: {failure.message[:200]}")
                mode, why = weaker, "FORMAT_REJECTED"
                continue
            failures, spent, why = failures + 1, spent + 1, failure.error.reason
            self._count_failure(endpoint, now)
            if spent < self._most_failures and self._pick(time.monotonic()) is not endpoint:
                continue  # another endpoint takes over at once
            delay = failure.wait if failure.wait is not None else self._backoff(failures)
            if (
                failures > self.max_retries
                or delay > self.max_retry_wait
                or spent >= self._most_failures
            ):
                raise failure.error(
                    f"{endpoint.name}: {failure.message} (after {failures} attempts)",
                    retry_after=delay,
                    usage=meter.usage(),
                )
            log.info(
                "retrying the model call", extra={"reason": failure.error.reason, "delay_s": delay}
            )
            if failure.wait is None:  # a wait the server asked for is kept by its Health
                await asyncio.sleep(delay)

    def _pick(self, now: float) -> Endpoint:
        """The first endpoint that is not cooling down and has room soon enough; else the
        one whose cool-down ends first."""
        for endpoint in self.endpoints:
            if (
                not endpoint.health.cooling(now)
                and endpoint.health.wait(0, now) <= self.max_retry_wait
            ):
                return endpoint
        return min(self.endpoints, key=lambda e: e.health.cooling_until)

    def _count_failure(self, endpoint: Endpoint, now: float) -> None:
        """A transient failure of `endpoint`; enough in a row start its cool-down (when there
        is another endpoint to use meanwhile)."""
        if len(self.endpoints) < 2:
            return
        if endpoint.health.failed(now, self.failures_before_cooldown, self.cooldown):
            log.warning(
                "%s failed %d times in a row; cooling down for %.0fs",
                endpoint.name,
                self.failures_before_cooldown,
                self.cooldown,
                extra={"endpoint": endpoint.name, "cooldown_s": self.cooldown},
            )

    @property
    def _most_failures(self) -> int:
        # Bounds one call's transient failures over all endpoints.
        return (self.max_retries + 1) * len(self.endpoints)

    def _classify(
        self, endpoint: Endpoint, error: TimeoutError | openai.APIError, mode: str
    ) -> _Failure:
        """What a failed call means."""
        if isinstance(error, TimeoutError | openai.APITimeoutError):
            return _Failure("transient", ProviderTimeout, f"no reply in {self.timeout}s")
        if not isinstance(error, openai.APIStatusError):  # connection errors, broken streams
            return _Failure("transient", ProviderUnreachable, error.message)
        status, text = error.status_code, _describe(error)
        if status in (400, 422) and any(name in text for name in endpoint.extras):
            return _Failure("extras", message=text)
        if (
            mode != "prompt"
            and formats.names_format(text)
            and (status in (400, 422) or status >= 500)
        ):
            return _Failure("format", message=text, certain=True)
        if mode != "prompt" and status == 400 and endpoint.modes.auto:
            # A 400 that does not say why: perhaps the format. The weaker mode is remembered
            # only once it works (if every mode gets a 400, the request itself is wrong).
            return _Failure("format", message=text)
        if status in (401, 403, 404):
            return _Failure("misconfigured", ProviderMisconfigured, text)
        if status == 429 or status >= 500:
            busy = ProviderRateLimited if status == 429 else ProviderUnavailable
            return _Failure("transient", busy, text, retry_after(error.response.headers))
        # Any other 4xx: the request itself is wrong.
        return _Failure("rejected", ProviderBadRequest if status == 400 else ProviderRejected, text)

    def _backoff(self, failures: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** (failures - 1)))

    @staticmethod
    def _request(
        endpoint: Endpoint,
        messages: list[Message],
        response_format: dict[str, Any] | None,
        max_tokens: int,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            **endpoint.extras,
            "model": endpoint.model,
            "messages": messages,
            "max_tokens": max_tokens,
        }
        if endpoint.stream:
            request["stream"] = True
        if response_format is not None:
            request["response_format"] = response_format
        return request

    async def _send(
        self,
        endpoint: Endpoint,
        request: dict[str, Any],
        mode: str,
        why: str,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
    ) -> Reply:
        """The one place every model call passes through: sends `request` to `endpoint`,
        counts the call and its tokens (estimated when the server sends none), lets the
        endpoint's headers pace what follows and writes the call's `CallRecord`. Waits first
        while `max_calls` calls are in flight."""
        async with self._in_flight:
            if not tracing.enabled():
                return await self._send_now(endpoint, request, mode, why, meter, on_progress)
            with tracing.span(
                f"chat {endpoint.model}",
                "client",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": "openai",
                    "gen_ai.request.model": endpoint.model,
                    "gen_ai.request.max_tokens": request["max_tokens"],
                    "server.address": urlsplit(endpoint.base_url).hostname or "",
                    "bitware.provider": endpoint.name,
                    "bitware.call_reason": why,
                },
            ) as span:
                try:
                    return await self._send_now(endpoint, request, mode, why, meter, on_progress)
                finally:
                    if span is not None:  # GenAI semantic conventions
                        call = meter.calls[-1]
                        span.set_attributes(
                            {
                                "gen_ai.usage.input_tokens": call.prompt_tokens,
                                "gen_ai.usage.output_tokens": call.completion_tokens,
                                "gen_ai.response.finish_reasons": [call.finish_reason or "none"],
                            }
                        )

    async def _send_now(
        self,
        endpoint: Endpoint,
        request: dict[str, Any],
        mode: str,
        why: str,
        meter: UsageMeter,
        on_progress: ProgressCallback | None,
    ) -> Reply:
        meter.call(endpoint.name, endpoint.model, endpoint.config.price)
        record = CallRecord(endpoint.name, endpoint.model, mode, why, request, time.time())
        started = time.monotonic()
        received = ElementCounter()  # what a streamed reply has brought so far
        in_flight, outcome = self.metrics.in_flight.labels(endpoint.model), "error"
        in_flight.inc()
        try:
            async with asyncio.timeout(self.timeout):
                raw = await endpoint.client.chat.completions.with_raw_response.create(
                    **_client_args(request)
                )
                endpoint.health.observe(raw.headers, time.monotonic())
                parsed = raw.parse()
                if isinstance(parsed, AsyncStream):
                    reply, tokens = await _read_stream(parsed, on_progress, received)
                else:
                    reply, tokens = _read_completion(parsed)
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            # The attempt was stopped (a cancel or the stage's timeout) before the server said
            # what this call used: what was sent and what arrived is counted, estimated.
            prompt = sum(estimate_tokens(m["content"]) for m in request["messages"])
            record.prompt_tokens, record.completion_tokens = prompt, received.tokens()
            record.estimated, record.error = True, "cancelled"
            self._count(meter, record)
            raise
        except (TimeoutError, openai.APIError) as error:
            if isinstance(error, openai.APIStatusError):
                endpoint.health.observe(error.response.headers, time.monotonic())
            record.error = (
                f"no reply in {self.timeout}s"
                if isinstance(error, TimeoutError)
                else _describe(error)
            )
            raise
        finally:
            record.latency_s = time.monotonic() - started
            meter.calls.append(record)
            in_flight.dec()
            self.metrics.seconds.labels(endpoint.model, outcome).observe(record.latency_s)
        if tokens is None:
            # The server sent no usage: an estimate keeps the budget honest rather than
            # recording the call as free.
            if not endpoint.estimating:
                endpoint.estimating = True
                log.warning(
                    "%s sends no usage; estimating tokens (pieces streamed, or the text)",
                    endpoint.name,
                    extra={"endpoint": endpoint.name},
                )
            prompt = sum(estimate_tokens(m["content"]) for m in request["messages"])
            completion = received.tokens() if received.pieces else estimate_tokens(reply.content)
            tokens = prompt, completion
            record.estimated = True
        record.prompt_tokens, record.completion_tokens = tokens
        record.content, record.finish_reason = reply.content, reply.finish_reason
        self._count(meter, record)
        return replace(reply, max_tokens=request["max_tokens"])

    def _count(self, meter: UsageMeter, record: CallRecord) -> None:
        """A call's tokens, once known, in the stage's meter and the process's metrics."""
        meter.add_tokens(record.prompt_tokens, record.completion_tokens)
        self.metrics.used(record, meter.cost_of(record))


def _read_completion(response: ChatCompletion) -> tuple[Reply, tuple[int, int] | None]:
    usage = response.usage
    tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else None
    if not response.choices:
        return Reply("", "", "stop"), tokens
    choice = response.choices[0]
    reply = Reply(
        choice.message.content or "", choice.message.refusal or "", choice.finish_reason or ""
    )
    return reply, tokens


async def _read_stream(
    stream: AsyncStream[ChatCompletionChunk],
    on_progress: ProgressCallback | None,
    counter: ElementCounter,
) -> tuple[Reply, tuple[int, int] | None]:
    """The streamed reply, fed to `counter` as it arrives (so a caller stopped midway knows
    what came)."""
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


def _checked(variable: str, mode: str) -> str:
    try:
        return formats.check(mode)
    except ValueError as error:
        raise ValueError(f"{variable}: {error}") from None


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
    # The body goes as given (the client would drop or reshape what it does not know, such as
    # llama.cpp's `repeat_penalty` or the `schema` inside `response_format`).
    body = {k: v for k, v in request.items() if k not in ("model", "messages", "stream")}
    args = {"model": request["model"], "messages": request["messages"], "extra_body": body}
    if request.get("stream"):
        args["stream"] = True  # the client returns a stream only when told by name
    return args


def _describe(error: openai.APIError) -> str:
    status = getattr(error, "status_code", None)
    return f"{status}: {error.message}" if status else error.message
