"""Measuring the pipeline the way users will meet it: fresh questions, at the concurrency admission
allows, full-length answers, under a given set of budgets.

Used twice: by the service before it says it is ready (``check``: "does every stage fit its budget
on this machine?") and by ``rag-service calibrate`` (``measure`` several rounds, then propose budgets).

Why fresh questions and a cleared prefix cache: vLLM caches the KV blocks of prompts it has seen, so
re-asking a warm-up question skips its prefill. That made the old check report a 750 ms first token
on a machine where every new question took over 4 s (PLATFORM.md), and the service said ready while
answering nothing. Each round therefore empties vLLM's prefix cache and asks questions no earlier
round asked; answers run to ``max_tokens`` (``min_tokens``) so the generate budget is checked against
the longest answer a default request can produce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_service.config import BudgetSettings
from rag_service.domain import Sampling
from rag_service.errors import DeadlineExceeded
from rag_service.pipeline.pipeline import Answer, Deadline, Pipeline

log = logging.getLogger(__name__)

# Stages in the order a request passes them, keyed like BudgetSettings.as_dict().
STAGES = ("embed", "retrieve", "first_token", "generate", "total")

# Questions the warm-up never asks (service.WARM_UP_*), each different, so none finds its prompt in
# vLLM's prefix cache. About the built-in corpus; on another corpus they still retrieve top_k passages
# and so make prompts of the same size as real questions, which is what the timing depends on.
FRESH_QUESTIONS = (
    "What does the global statement do?",
    "How is an exception raised with a cause?",
    "What does the yield expression return to the caller?",
    "When is the else clause of a try statement executed?",
    "How does the with statement call __enter__ and __exit__?",
    "What is the difference between is and == in comparisons?",
    "How are default argument values evaluated in a function definition?",
    "What does the nonlocal statement change?",
    "How do conditional expressions evaluate their operands?",
    "What happens when del is applied to a name?",
    "How are keyword-only parameters declared?",
    "What does the await expression do inside a coroutine?",
    "How does Python look up an attribute on an instance?",
    "What is a generator expression?",
    "How does the import statement find a module?",
    "What do the bitwise shift operators do with negative numbers?",
    "How are class decorators applied?",
    "What does the continue statement do in a while loop?",
    "How does slicing work on sequences?",
    "What is the order of evaluation of function arguments?",
    "What does the return statement do in a generator?",
    "How do augmented assignment statements work?",
    "What are the rules for truth value testing?",
    "How does a match statement compare a subject with patterns?",
    "What does the raise statement do without an expression?",
    "How are string literals concatenated?",
    "What does the async for statement iterate over?",
    "How is operator precedence defined for the power operator?",
    "What does the type statement define?",
    "How does the finally clause interact with return?",
    "What is a starred assignment target?",
    "How are names resolved in class bodies?",
)


def stage_times(answer: Answer) -> dict[str, float]:
    """Each budgeted stage's own time in ms. ``timings_ms`` has ``first_token`` from the request's
    start; its budget runs from the hand-over to vLLM (the generate stage's start), so convert it. An
    answer with no first token in time counts its whole generate stage as the first token's time."""
    t = answer.timings_ms
    out: dict[str, float] = {
        name: t[name] for name in ("embed", "retrieve", "generate", "total") if name in t
    }
    if "generate" in t and "total" in t:
        generate_started = t["total"] - t["generate"]
        out["first_token"] = (
            round(t["first_token"] - generate_started, 2) if "first_token" in t else t["generate"]
        )
    return out


@dataclass
class Round:
    """What one or more rounds of questions measured: per-stage samples (ms), answers over a budget
    (``misses``, ``stage: detail``) and requests that failed outright (504: ``errors``)."""

    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    misses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    answers: int = 0
    concurrency: int = 1
    max_tokens: int = 0
    tokens: list[int] = field(default_factory=list)

    def extend(self, other: Round) -> None:
        for stage, values in other.samples.items():
            self.samples[stage].extend(values)
        self.misses += other.misses
        self.errors += other.errors
        self.answers += other.answers
        self.tokens += other.tokens
        self.concurrency = max(self.concurrency, other.concurrency)
        self.max_tokens = max(self.max_tokens, other.max_tokens)

    def percentiles(self) -> dict[str, dict[str, float]]:
        """p50 / p99 / max per stage (with a handful of samples p99 is close to the max: both shown)."""
        out = {}
        for stage, values in self.samples.items():
            if values:
                arr = np.asarray(values)
                out[stage] = {
                    "p50": round(float(np.percentile(arr, 50)), 1),
                    "p99": round(float(np.percentile(arr, 99)), 1),
                    "max": round(float(arr.max()), 1),
                }
        return out

    @property
    def ok(self) -> bool:
        return not self.misses and not self.errors

    def describe(self, budgets: BudgetSettings | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "answers": self.answers,
            "concurrency": self.concurrency,
            "max_tokens": self.max_tokens,
            "measured_ms": self.percentiles(),
            "within_budgets": self.ok,
            "misses": self.misses + self.errors,
        }
        if self.tokens:
            body["completion_tokens_mean"] = round(float(np.mean(self.tokens)), 1)
        if budgets is not None:
            body["budgets_ms"] = budgets.as_dict()
        return body


class QuestionSource:
    """Hands out questions no earlier round of this process asked (cycling only after all were used,
    by which time each round has emptied the prefix cache anyway)."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, count: int) -> list[str]:
        questions = [FRESH_QUESTIONS[(self._next + i) % len(FRESH_QUESTIONS)] for i in range(count)]
        self._next += count
        return questions


async def run_round(
    pipeline: Pipeline,
    questions: Sequence[str],
    *,
    budgets: BudgetSettings,
    max_tokens: int,
    full_length: bool = True,
) -> Round:
    """All ``questions`` at once (so ``len(questions)`` is the concurrency), on an empty prefix cache."""
    await pipeline.generator.reset_prefix_cache()
    settings = pipeline.settings
    requests = []
    for question in questions:
        req = pipeline.new_request(
            question,
            top_k=settings.retriever.top_k,
            max_tokens=max_tokens,
            temperature=0.0,
            stop=settings.generator.stop,
            deadline=Deadline(budgets.total_ms, reserve_ms=budgets.reply_reserve_ms),
            budgets=budgets,
        )
        req.cache = False  # measured: it must be generated, never reused
        if full_length:
            req.sampling = Sampling(min_tokens=max_tokens)
        requests.append(req)
    results = await asyncio.gather(*(pipeline.ask(r) for r in requests), return_exceptions=True)
    measured = Round(answers=len(results), concurrency=len(questions), max_tokens=max_tokens)
    limits = budgets.as_dict()
    for result in results:
        if isinstance(result, DeadlineExceeded):
            measured.errors.append(f"{result.stage}: {result.message}")
            continue
        if isinstance(result, BaseException):
            raise result
        times = stage_times(result)
        for stage, ms in times.items():
            measured.samples[stage].append(ms)
        measured.tokens.append(result.usage.completion_tokens)
        if result.degraded:
            stage = result.degraded_reason or "generate"
            measured.misses.append(
                f"{stage}: {times.get(stage, 0):.0f} ms, over its {limits[stage]:.0f} ms budget "
                f"({result.usage.completion_tokens} of {max_tokens} tokens generated)"
            )
        elif times.get("total", 0) > limits["total"]:
            measured.misses.append(
                f"total: {times['total']:.0f} ms, over its {limits['total']:.0f} ms budget"
            )
    return measured


async def check(
    pipeline: Pipeline, questions: QuestionSource, budgets: BudgetSettings, concurrency: int, max_tokens: int
) -> Round:
    """One round of ``concurrency`` fresh questions under ``budgets``; a miss is retried once with other
    fresh questions (one noisy moment on a shared machine should not fail a start), and the second
    round is the verdict."""
    result = await run_round(pipeline, questions.take(concurrency), budgets=budgets, max_tokens=max_tokens)
    if result.ok:
        return result
    log.warning(
        "readiness check missed its budgets (%s): trying once more", "; ".join(result.misses + result.errors)
    )
    return await run_round(pipeline, questions.take(concurrency), budgets=budgets, max_tokens=max_tokens)
