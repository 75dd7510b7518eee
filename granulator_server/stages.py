"""What one accepted stage attempt does, free of gRPC: `generate` asks the provider for a
structure, scores it and stores it as an element tree; `validate` re-scores the structure of the
previous stage's job (optionally with an LLM judge) and records the validation on that job.

An attempt ends as an `Outcome`, which is also what the job stores as its result, so a repeated
`Process` answers from the database instead of working twice. Progress goes to the attempt's
`StageLog` as it happens.

Waiting on the model is I/O: a granulator holds many attempts at once (see `worker`). What
follows the model's answer — checking, scoring and storing the structure — is CPU-bound and runs
for at most `cpu_jobs` attempts at once (`StageRunner.cpu`), so that answers arriving together
are finished one after another, each soon, rather than all slowly side by side.

Validate's quality: the rules score alone, or with a judge (params `judge_level` 1-3 and a real
model configured) ``0.7 × rules + 0.3 × judge`` — the rules keep the larger say because they
catch structural breakage that a judge reading prose can overlook.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import StrEnum
from typing import Any

from bitware_core.db import Database, utcnow
from bitware_core.domain import JobStatus, Quality, StageError, StageOutcome
from bitware_core.pipelines import BUILT_IN_CAPABILITIES
from bitware_core.sql import Tx
from granulator_server import calls, jobs, progress, template_store
from granulator_server.domain import (
    QualityReport,
    StructureTemplate,
    build_prompt,
    score_quality,
    to_elements,
)
from granulator_server.domain.offline import generate_offline
from granulator_server.domain.validation import INTEGRITY_RULES
from granulator_server.errors import (
    NoPreviousJob,
    PreviousJobNotReady,
    StageFailure,
    WorkerError,
    WorkerLost,
    WorkerRestarted,
)
from granulator_server.providers import Generation, Provider
from granulator_server.providers.base import UsageMeter, track_meters, usage_of

log = logging.getLogger("bitware.granulator.stages")
JUDGE_WEIGHT = 0.3
#: The capabilities a granulator offers (each with its actions in BUILT_IN_CAPABILITIES).
CAPABILITIES = tuple(BUILT_IN_CAPABILITIES)


@dataclass(frozen=True)
class Work:
    """An accepted offer, as plain values."""

    execution_id: str
    stage_id: str
    attempt: int
    client_id: str
    capability: str
    action: str
    template: StructureTemplate
    spec: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    previous_job_id: str = ""
    feedback: str = ""
    min_quality: float = 0.0


@dataclass(frozen=True)
class Offered:
    """A stage attempt offered in a Handshake, as plain values (not yet checked)."""

    execution_id: str
    stage_id: str
    attempt: int
    epoch: int
    client_id: str
    capability: str
    action: str
    #: The template the stage names; "" to go by the spec's structure type.
    structure_template: str
    #: The content spec; its `structure_type` is "" when the offer names none.
    spec: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)
    previous_job_id: str = ""
    previous_output: dict[str, Any] = field(default_factory=dict)
    feedback: str = ""
    min_quality: float = 0.0
    #: The number of a structure type this granulator does not know, when the offer named one.
    unknown_structure_type: int = 0


class DeclineReason(StrEnum):
    """Why a worker declines an offer (`bitware.worker.v1.DeclineReason`, without its prefix)."""

    AT_CAPACITY = "AT_CAPACITY"
    INVALID_INPUT = "INVALID_INPUT"
    UNSUPPORTED = "UNSUPPORTED"
    UNKNOWN_TEMPLATE = "UNKNOWN_TEMPLATE"
    DRAINING = "DRAINING"


@dataclass(frozen=True)
class Decline:
    """An offer not taken: an answer, not an error (the orchestrator tries another worker, or
    this one after `retry_after` seconds)."""

    reason: DeclineReason
    message: str
    retry_after: float = 0.0


#: Finds the structure template a query names (a name or a structure type), or None.
Resolve = Callable[[str], Awaitable[StructureTemplate | None]]


async def check_offer(
    offered: Offered, resolve: Resolve, *, draining: bool = False
) -> Work | Decline:
    """Whether this granulator can work on the offered attempt: the `Work` it would do, or why
    not. In order: a stopping worker takes nothing; the capability and action must be offered
    here; the template must be found (by name, else by the spec's structure type) and build
    that type; the input must be usable (a topic, granularity 1-5, a previous job to
    validate, a judge level 0-3), every problem named at once. Slots are not counted here."""
    if draining:
        return Decline(DeclineReason.DRAINING, "the worker is stopping")
    if offered.action not in BUILT_IN_CAPABILITIES.get(offered.capability, ()):
        return Decline(
            DeclineReason.UNSUPPORTED,
            f"capability {offered.capability!r} with action {offered.action!r} is not "
            f"offered here; capabilities: {', '.join(CAPABILITIES)}",
        )
    if offered.unknown_structure_type:
        return Decline(
            DeclineReason.INVALID_INPUT,
            f"unknown structure type {offered.unknown_structure_type}",
        )
    spec = offered.spec
    structure_type = str(spec.get("structure_type", ""))
    query = offered.structure_template or structure_type
    template = await resolve(query) if query else None
    if template is None:
        return Decline(DeclineReason.UNKNOWN_TEMPLATE, f"no structure template matches {query!r}")
    problems = []
    if structure_type and template.structure_type != structure_type:
        problems.append(f"template {template.name} builds {template.structure_type}")
    if not str(spec.get("topic", "")).strip():
        problems.append("spec.topic is empty")
    granularity = int(spec.get("granularity", 0))
    if not 1 <= granularity <= 5:
        problems.append(f"spec.granularity {granularity} is not from 1 to 5")
    previous = target_job(offered.previous_job_id, offered.previous_output)
    if offered.action == "validate" and not previous:
        problems.append("validate needs the previous stage's job")
    try:
        judge_level(offered.params)
    except ValueError as error:
        problems.append(f"params.{error}")
    if problems:
        return Decline(DeclineReason.INVALID_INPUT, "; ".join(problems))
    return Work(
        execution_id=offered.execution_id,
        stage_id=offered.stage_id,
        attempt=offered.attempt,
        client_id=offered.client_id,
        capability=offered.capability,
        action=offered.action,
        template=template,
        spec=spec,
        params=offered.params,
        previous_job_id=previous,
        feedback=offered.feedback,
        min_quality=offered.min_quality,
    )


def target_job(previous_job_id: str, previous_output: dict[str, Any]) -> str:
    """The job a `validate` stage works on: the previous stage's job."""
    return previous_job_id or str(previous_output.get("job_id", ""))


def judge_level(params: dict[str, str]) -> int:
    """`params["judge_level"]` as 0-3; 0 (no judge) when absent. Raises ValueError otherwise."""
    raw = params.get("judge_level", "").strip()
    level = int(raw) if raw else 0
    if not 0 <= level <= 3:
        raise ValueError(f"judge_level must be 0-3, got {level}")
    return level


#: The reference structure's size per shape (see `estimate`); generating it is most of an
#: offline stage's CPU, and with a model it would be a millisecond of every Handshake.
_SIZES: dict[tuple[str, int, int, str, int], tuple[int, int]] = {}
SIZES_KEPT = 256


@dataclass(frozen=True)
class Size:
    """A structure's expected size: the tokens of its prompt and answer, and its elements."""

    prompt_tokens: int
    completion_tokens: int
    elements: int


def reference_size(template: StructureTemplate, spec: dict[str, Any]) -> tuple[int, int]:
    """The characters and elements of the offline structure for the same request: the size a
    model's answer should have. It depends on the template, the granularity, the audience and
    the topic's length, not on the topic's words (to within a few characters), so it is
    generated once per such shape."""
    topic, audience, granularity = spec["topic"], spec.get("audience", ""), int(spec["granularity"])
    key = (template.name, template.version, granularity, audience, len(topic))
    size = _SIZES.get(key)
    if size is None:
        reference = generate_offline(template, topic, audience, granularity, {})
        size = _SIZES[key] = (
            len(json.dumps(reference)),
            len(to_elements(template.structure_type, reference)),
        )
        if len(_SIZES) > SIZES_KEPT:
            del _SIZES[next(iter(_SIZES))]  # the oldest
    return size


def estimate(template: StructureTemplate, spec: dict[str, Any]) -> Size:
    """Expected prompt and completion tokens (about four characters a token) and elements, from
    the prompt and the `reference_size`."""
    system, user = build_prompt(
        template,
        spec["topic"],
        spec.get("audience", ""),
        int(spec["granularity"]),
        dict(spec.get("constraints", {})),
        dict(spec.get("options", {})),
    )
    characters, elements = reference_size(template, spec)
    schema = json.dumps(template.json_schema)
    return Size(
        prompt_tokens=(len(system) + len(user) + len(schema)) // 4,
        completion_tokens=characters // 4,
        elements=elements,
    )


@dataclass(frozen=True)
class Estimate:
    """What an accepted attempt is expected to need (the Handshake's answer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    memory_mb: int = 64
    seconds: float = 30.0


def estimate_work(work: Work, provider: Provider) -> Estimate:
    """A generation's tokens (see `estimate`) and their cost at the provider's prices; a
    review's are not guessed. A tenth of a second offline, 30 s with a model."""
    seconds = 0.1 if provider.name == "offline" else 30.0
    if work.action != "generate":
        return Estimate(seconds=seconds)
    guess = estimate(work.template, work.spec)
    prompt, completion = guess.prompt_tokens, guess.completion_tokens
    prices = provider.prices
    cost = prices.cost(provider.model, prompt, completion) if prices is not None else 0.0
    return Estimate(prompt, completion, cost, seconds=seconds)


class StageRunner:
    def __init__(self, db: Database, provider: Provider, worker_id: str, cpu_jobs: int) -> None:
        self.db, self.provider, self.worker_id = db, provider, worker_id
        #: Held by an attempt while it does CPU-bound work (see the module docstring).
        self.cpu = asyncio.Semaphore(cpu_jobs)
        #: How many generations the provider was asked for (tests check idempotency with it).
        self.generations = 0

    async def run(
        self, work: Work, stage_log: progress.StageLog, *, job_known_new: bool = False
    ) -> StageOutcome:
        """Runs the attempt and returns its outcome (see module docstring); re-raises
        cancellation after recording it. `job_known_new`: no job for the attempt exists yet."""
        job = await self.db.run_tx(
            lambda tx: jobs.start(
                tx,
                client_id=work.client_id,
                execution_id=work.execution_id,
                stage_id=work.stage_id,
                attempt=work.attempt,
                action=work.action,
                spec=work.spec,
                structure_type=work.template.structure_type,
                template_name=work.template.name,
                worker_id=self.worker_id,
                known_new=job_known_new,
            )
        )
        meters = track_meters()  # this runs in the attempt's own task, so its own context
        try:
            return await self._attempt(work, job.id, stage_log, meters)
        finally:
            # Every model call of the attempt is kept with its job before Process answers.
            await self._keep_calls(job.id, meters)

    async def _attempt(
        self, work: Work, job_id: str, stage_log: progress.StageLog, meters: list[UsageMeter]
    ) -> StageOutcome:
        try:
            if work.action == "validate":
                return await self._validate(work, job_id, stage_log)
            return await self._generate(work, job_id, stage_log)
        except asyncio.CancelledError:
            # Stopped by a cancel or the stage's timeout: what the model calls consumed so far
            # is kept on the job, and `Cancel` answers with it.
            cancelled = StageOutcome(usage=usage_of(meters), cancelled=True)
            await self.db.run_tx(
                lambda tx: jobs.fail(tx, job_id, JobStatus.CANCELLED, "cancelled", cancelled)
            )
            stage_log.add(progress.CANCELLED, "cancelled", 1.0)
            raise
        except StageFailure as failure:
            outcome = failure_outcome(failure)
        except Exception as error:  # a bug: reported as INTERNAL so the stage can be retried
            log.exception("stage failed", extra={"job": job_id})
            outcome = failure_outcome(
                WorkerError(f"{type(error).__name__}", usage=usage_of(meters))
            )
        assert outcome.error is not None
        message = outcome.error.message
        await self.db.run_tx(lambda tx: jobs.fail(tx, job_id, JobStatus.FAILED, message, outcome))
        stage_log.add(progress.FAILED, message, 1.0)
        return outcome

    async def end_left_running(self) -> int:
        """Ends as failed (`WORKER_RESTARTED`, retried by the orchestrator) the jobs that a
        previous process of this worker left running; how many. Run before taking work."""
        if not self.worker_id:  # nothing tells this process's jobs from others'
            return 0
        outcome = failure_outcome(WorkerRestarted(self.worker_id))
        return await self.db.run_tx(lambda tx: jobs.end_left_running(tx, self.worker_id, outcome))

    async def tend_jobs(self, stale_after: float) -> int:
        """Marks this worker's running jobs alive, and ends as failed (`WORKER_LOST`) any job
        that no granulator has marked alive for `stale_after` seconds; how many it ended.
        Every granulator calls it every so often (see `server.JOB_TOUCH_SECONDS`)."""
        outcome = failure_outcome(WorkerLost(stale_after))
        before = utcnow() - timedelta(seconds=stale_after)

        def tend(tx: Tx) -> int:
            if self.worker_id:
                jobs.touch_running(tx, self.worker_id)
            return jobs.end_stale(tx, before, outcome)

        return await self.db.run_tx(tend)

    async def _keep_calls(self, job_id: str, meters: list[UsageMeter]) -> None:
        made = sorted(
            (calls.row_of(call, meter.cost_of(call)) for meter in meters for call in meter.calls),
            key=lambda row: row["started_at"],
        )
        if made:
            await self.db.run_tx(lambda tx: calls.store(tx, job_id, made))

    async def _generate(
        self, work: Work, job_id: str, stage_log: progress.StageLog
    ) -> StageOutcome:
        granularity = int(work.spec["granularity"])
        expected = max(1, reference_size(work.template, work.spec)[1])
        stage_log.add(progress.PROMPT_BUILT, f"using template {work.template.name}", 0.1)
        stage_log.add(
            progress.GENERATING, f"generating with the {self.provider.name} provider", 0.2
        )

        def streamed(count: int) -> None:
            fraction = 0.2 + 0.5 * min(1.0, count / expected)
            stage_log.add(progress.GENERATING, f"{count} elements so far", fraction, count)

        self.generations += 1
        generation = await self.provider.generate(work.template, work.spec, work.feedback, streamed)
        async with self.cpu:
            return await self._finish(work, job_id, stage_log, generation, granularity)

    async def _finish(
        self,
        work: Work,
        job_id: str,
        stage_log: progress.StageLog,
        generation: Generation,
        granularity: int,
    ) -> StageOutcome:
        """Scores the generated structure and stores it (the CPU-bound part of `generate`)."""
        stage_log.add(progress.VALIDATING, "validating", 0.7)
        report = score_quality(
            work.template,
            generation.document,
            granularity,
            schema_checked=generation.schema_checked,
        )
        quality = gate(work.template, report, report.score, work.min_quality)
        stage_log.add(progress.STORING, "storing the element tree", 0.85)
        outcome = StageOutcome(
            usage=generation.usage,
            job_id=job_id,
            output={
                "job_id": job_id,
                "structure_type": work.template.structure_type,
                "template": work.template.name,
                "quality_score": report.score,
            },
            quality=quality,
        )
        stored = await self.db.run_tx(
            lambda tx: jobs.complete(
                tx,
                job_id,
                document=generation.document,
                report=report,
                result=outcome,
                unusable=unusable(quality, work.min_quality),
            )
        )
        stage_log.add(progress.COMPLETED, "completed", 1.0, stored.element_count)
        return StageOutcome.from_json(stored.result)

    async def _validate(
        self, work: Work, job_id: str, stage_log: progress.StageLog
    ) -> StageOutcome:
        target_id = work.previous_job_id
        target = await self.db.run_tx(lambda tx: jobs.by_id(tx, target_id))
        if target is None or target.client_id != work.client_id:
            raise NoPreviousJob(target_id)
        if target.status != JobStatus.COMPLETED or not target.document:
            raise PreviousJobNotReady(target_id, target.status)
        found = await self.db.run_tx(
            lambda tx: template_store.resolve_tx(tx, self.db.engine, target.template_name)
        )
        template = found[0] if found else work.template
        granularity = int(target.spec.get("granularity", work.spec["granularity"]))
        stage_log.add(progress.VALIDATING, f"validating job {target_id} by the rules", 0.2)
        report = score_quality(template, target.document, granularity)
        rules_quality = jobs.quality_dict(report)
        records = [jobs.validation_record("rules", rules_quality)]
        usage = UsageMeter("offline", "offline").usage()
        score, components = report.score, dict(report.components)
        feedback = report.feedback
        level = judge_level(work.params)
        if level:
            stage_log.add(progress.VALIDATING, f"asking the LLM judge (level {level})", 0.5)
            try:
                judgement = await self.provider.judge(template, target.spec, target.document, level)
            except StageFailure as failure:  # the judge is optional: the rules still score
                log.warning("the LLM judge failed", extra={"reason": failure.reason})
                usage += failure.usage
                judgement = None
            if judgement is not None:
                usage = judgement.usage
                judged = {
                    "score": judgement.score,
                    "components": judgement.criteria,
                    "feedback": judgement.feedback,
                    "violations": [],
                }
                records.append(jobs.validation_record("llm_judge", judged))
                score = round((1 - JUDGE_WEIGHT) * report.score + JUDGE_WEIGHT * judgement.score, 1)
                components["llm_judge"] = judgement.score / 100
                feedback = "\n".join(p for p in (feedback, judgement.feedback) if p)
        quality = replace(
            gate(template, report, score, work.min_quality),
            components=components,
            feedback=feedback,
        )
        stage_log.add(progress.STORING, "recording the validation", 0.9)
        await self.db.run_tx(
            lambda tx: jobs.record_validations(tx, target_id, records, quality.to_json())
        )
        outcome = StageOutcome(
            usage=usage,
            job_id=target_id,
            output={
                "job_id": target_id,
                "validation_job_id": job_id,
                "structure_type": template.structure_type,
                "quality_score": score,
                "validators": [r["validator"] for r in records],
            },
            quality=quality,
            metrics={"validations": float(len(records))},
        )
        await self.db.run_tx(lambda tx: jobs.finish_validation(tx, job_id, outcome))
        stage_log.add(progress.COMPLETED, "validated", 1.0)
        return outcome


def gate(
    template: StructureTemplate, report: QualityReport, score: float, min_quality: float
) -> Quality:
    """The quality the stage reports: the rules' report with the final `score`, whether it
    falls short of `min_quality` or breaks an integrity rule, and whether the template accepts
    a result below the minimum (soft criteria only; the orchestrator decides the stage)."""
    broken = bool(report.integrity_failures)
    return Quality(
        score=score,
        components=dict(report.components),
        feedback=report.feedback,
        violations=tuple(report.violations),
        below_threshold=broken or score < min_quality,
        integrity_failed=broken,
        accept_below_minimum=template.rules.accept_below_minimum,
    )


def unusable(quality: Quality, min_quality: float) -> str:
    """Why a generated structure cannot be delivered, or "" when it can: it breaks an
    integrity rule, or it is below the minimum and its template does not accept that."""
    if quality.integrity_failed:
        broken = [v.message for v in quality.violations if v.rule in INTEGRITY_RULES]
        return f"breaks integrity rules: {'; '.join(broken[:3])}"
    if quality.below_threshold and not quality.accept_below_minimum:
        return f"quality {quality.score:.1f} is below the minimum {min_quality:.0f}"
    return ""


def failure_outcome(failure: StageFailure) -> StageOutcome:
    error = StageError(failure.error_class, failure.reason, failure.message, failure.retry_after)
    return StageOutcome.failed(error, failure.usage)
