"""What a real small model manages: SmolLM2-135M-Instruct served by llama.cpp's server (the
`local` extra, `make local-model`), asked for structures by the granulator's `openai` provider
with the settings `bitware up --local-model` gives it. Per structure type: how many structures
came out schema-valid, how many replies were valid JSON, the rules' quality score of the valid
ones (and how many break an integrity rule, which the quality gate refuses), calls and seconds
per structure, and tokens produced per second. No mesh: the provider and the scorer alone, one
structure at a time.

    .venv/bin/python bench/local_model.py [--n 3] [--types quiz course] [--granularity 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import common

from bitware_core.config import Settings
from bitware_mesh import local_model
from granulator_server.domain import SEED_TEMPLATES, score_quality
from granulator_server.errors import StageFailure
from granulator_server.pricing import PriceTable
from granulator_server.providers import OpenAIProvider, choose_provider
from granulator_server.providers.base import track_meters
from granulator_server.providers.replies import ReplyError, parse_object

TOPICS = ("Rust", "Photosynthesis", "Negotiation", "SQL joins", "The French Revolution")


@dataclass
class Tally:
    structures: int = 0
    valid: int = 0
    calls: int = 0
    json_replies: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    quality: list[float] = field(default_factory=list)
    integrity_broken: int = 0
    seconds: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    call_seconds: float = 0.0


def start_server() -> tuple[subprocess.Popen[str], str]:
    """`python -m bitware_mesh.local_model` on a free port; (process, host:port)."""
    env = {**os.environ, "BITWARE_HOST": "127.0.0.1", "BITWARE_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bitware_mesh.local_model"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if line.startswith("BITWARE_READY local-model "):
            return process, line.split()[2]
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit("the local model did not start within 120 s")


async def one(
    provider: OpenAIProvider, structure_type: str, topic: str, granularity: int, tally: Tally
) -> None:
    template = next(t for t in SEED_TEMPLATES if t.structure_type == structure_type)
    spec = {"topic": topic, "audience": "beginners", "granularity": granularity}
    spec |= {"constraints": {}, "options": {}}
    meters = track_meters()
    started = time.monotonic()
    try:
        generation = await provider.generate(template, spec, "")
    except StageFailure as failure:
        tally.failures[failure.reason] = tally.failures.get(failure.reason, 0) + 1
    else:
        tally.valid += 1
        report = score_quality(template, generation.document, granularity)
        tally.quality.append(report.score)
        tally.integrity_broken += bool(report.integrity_failures)
    tally.seconds.append(time.monotonic() - started)
    tally.structures += 1
    for call in (c for meter in meters for c in meter.calls):
        tally.calls += 1
        tally.completion_tokens += call.completion_tokens
        tally.call_seconds += call.latency_s
        try:
            parse_object(call.content)
            tally.json_replies += 1
        except ReplyError:
            pass


def report(structure_type: str, t: Tally) -> dict[str, Any]:
    quality = (
        f"{statistics.mean(t.quality):.1f} (min {min(t.quality):.1f}, max {max(t.quality):.1f})"
        if t.quality
        else "-"
    )
    row = {
        "type": structure_type,
        "structures": t.structures,
        "schema_valid": t.valid,
        "calls": t.calls,
        "json_replies": t.json_replies,
        "failures": t.failures,
        "quality_mean": statistics.mean(t.quality) if t.quality else None,
        "integrity_broken": t.integrity_broken,
        "seconds_mean": statistics.mean(t.seconds),
        "seconds_max": max(t.seconds),
        "tokens_per_s": t.completion_tokens / t.call_seconds if t.call_seconds else 0.0,
    }
    print(
        f"\n{structure_type}: {t.valid}/{t.structures} schema-valid; {t.json_replies}/{t.calls} replies valid JSON; failures {t.failures or 'none'}"
    )
    print(
        f"  quality of the valid ones {quality}; {t.integrity_broken} of them break an integrity rule"
    )
    print(
        f"  {row['seconds_mean']:.1f} s per structure (max {row['seconds_max']:.1f}), {t.calls / t.structures:.1f} calls each, {row['tokens_per_s']:.1f} tokens/s produced"
    )
    return row


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3, help="structures per type")
    parser.add_argument("--types", nargs="+", default=["quiz", "course"])
    parser.add_argument("--granularity", type=int, default=2)
    args = parser.parse_args()
    if problem := local_model.missing():
        raise SystemExit(problem)
    process, address = start_server()
    try:
        settings = Settings.from_env(local_model.granulator_settings(address))
        provider = choose_provider(settings, PriceTable())
        assert isinstance(provider, OpenAIProvider)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"{local_model.MODEL_ALIAS} at {address}, mode {settings.openai.structured}, granularity {args.granularity}, {args.n} per type; {os.cpu_count()} cores, load {load}"
        )
        rows = []
        for structure_type in args.types:
            tally = Tally()
            for index in range(args.n):
                await one(
                    provider, structure_type, TOPICS[index % len(TOPICS)], args.granularity, tally
                )
            rows.append(report(structure_type, tally))
        await provider.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    common.save("local_model", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    asyncio.run(main())
