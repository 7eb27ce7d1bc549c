"""A request's deadline and the budget of each of its stages: ``Deadline``, ``Stage``, ``RequestTimer``.

``Stage.run`` enforces a budget on awaited work (not started when no time is left, cancelled at the
limit, refused after the fact if it overran without being interruptible); ``RequestTimer`` records
each stage's wall time (``timings_ms`` and the ``rag_stage_seconds`` histogram).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rag_service.errors import DeadlineExceeded
from rag_service.runtime.metrics import Metrics

T = TypeVar("T")


class Deadline:
    """The moment (``time.monotonic()``) by which a request's work must end, fixed at its arrival:
    ``total_ms`` after it, less a reserve for the reply to reach the client (at most a tenth of the
    total), so the client-side p99 stays within the budget too."""

    def __init__(self, total_ms: float, started: float | None = None, *, reserve_ms: float = 0.0) -> None:
        self.started = time.monotonic() if started is None else started
        self.total_ms = total_ms
        self.at = self.started + (total_ms - min(reserve_ms, total_ms / 10)) / 1000

    def remaining_s(self) -> float:
        return self.at - time.monotonic()

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 2)


class Stage:
    """One stage of one request. Its budget ends at ``ends_at``: its own start plus its budget, or
    the request's deadline if that comes first."""

    def __init__(self, name: str, budget_ms: float, deadline: Deadline, *, cap: float | None = None) -> None:
        self.name = name
        self.budget_ms = budget_ms
        self.started = time.monotonic()
        self.ends_at = min(
            self.started + budget_ms / 1000, deadline.at, cap if cap is not None else deadline.at
        )

    def sub(self, name: str, budget_ms: float, deadline: Deadline) -> Stage:
        """A budget inside this stage (the first token inside generation), never ending after it."""
        return Stage(name, budget_ms, deadline, cap=self.ends_at)

    def _overrun(self, why: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the {self.name} stage {why} (its budget is {self.budget_ms:g} ms, capped by the request's "
            "deadline)",
            stage=self.name,
        )

    async def run(self, work: Awaitable[T]) -> T:
        """Await ``work`` within the stage's budget: not started when no time is left, cancelled at the
        limit, and refused after the fact if it overran without being interruptible."""
        limit = self.ends_at - time.monotonic()
        if limit <= 0:
            if asyncio.iscoroutine(work):
                work.close()  # never started: no "coroutine was never awaited" warning
            raise self._overrun("had no time left to start")
        try:
            result = await asyncio.wait_for(work, limit)
        except TimeoutError:
            raise self._overrun("ran out of time") from None
        if time.monotonic() > self.ends_at:
            raise self._overrun("finished after its budget")
        return result


class RequestTimer:
    """The request's deadline plus the wall-clock milliseconds of each stage, recorded as metrics too."""

    def __init__(self, deadline: Deadline, metrics: Metrics) -> None:
        self.deadline = deadline
        self.metrics = metrics
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, budget_ms: float) -> Iterator[Stage]:
        stage = Stage(name, budget_ms, self.deadline)
        try:
            yield stage
        finally:
            seconds = time.monotonic() - stage.started
            self.ms[name] = round(seconds * 1000, 2)
            self.metrics.observe_stage(name, seconds)

    def record(self, name: str, seconds: float) -> None:
        """A part of a stage measured by the caller (each retriever inside ``retrieve``)."""
        self.ms[name] = round(seconds * 1000, 2)
        self.metrics.observe_stage(name, seconds)

    def mark(self, name: str) -> None:
        """Milliseconds from the request's start until now (the first token, the total)."""
        self.ms[name] = self.deadline.elapsed_ms()
        self.metrics.observe_stage(name, self.ms[name] / 1000)

    def finish(self) -> dict[str, float]:
        self.mark("total")
        return dict(self.ms)
