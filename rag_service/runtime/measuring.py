"""``rag-service calibrate``'s measuring run: start the service here (no budget check), time every stage
with fresh questions, one at a time and then ``max_in_flight`` at once, stop it, propose budgets by the
rule of ``calibration.py``. Apart from ``calibration.py`` (which the service itself reads), so the
service and its calibration import each other in no circle."""

from __future__ import annotations

import time
from typing import Any

from rag_service.config import BudgetSettings, Settings
from rag_service.runtime import readiness
from rag_service.runtime.calibration import HEADROOM, Calibration, fingerprint, propose
from rag_service.runtime.service import NO_BUDGETS, Service, State


async def calibrate(
    settings: Settings, *, singles: int, rounds: int, headroom: float = HEADROOM, progress: Any = print
) -> tuple[Calibration, str]:
    """Starts the service in this process (no budget check), measures, stops it; returns the
    calibration and its fingerprint. Nothing is written here."""
    started = time.perf_counter()
    service = Service(settings)
    progress("starting the service (models, index, vLLM engine, warm-up): about a minute", flush=True)
    await service.start(check_budgets=False)
    try:
        if service.state is not State.READY:
            raise RuntimeError(f"the service did not start: {service.reason}")
        pipeline = service.pipeline
        concurrency = settings.admission.max_in_flight
        max_tokens = settings.generator.max_tokens
        total_rounds = singles + rounds
        single, concurrent = readiness.Round(), readiness.Round()
        for n in range(total_rounds):
            at_once = 1 if n < singles else concurrency
            measured = await readiness.run_round(
                pipeline, service.questions.take(at_once), budgets=NO_BUDGETS, max_tokens=max_tokens
            )
            (single if n < singles else concurrent).extend(measured)
            stats = measured.percentiles()
            progress(
                f"round {n + 1}/{total_rounds}: {at_once} at once, {max_tokens} tokens each: "
                + ", ".join(f"{s} {stats[s]['max']:.0f} ms" for s in readiness.STAGES if s in stats),
                flush=True,
            )
        both = readiness.Round()
        both.extend(single)
        both.extend(concurrent)
        p99 = {stage: values["p99"] for stage, values in both.percentiles().items()}
        proposed = propose(p99, settings.budget.reply_reserve_ms, headroom)
        BudgetSettings(**{f"{s}_ms": v for s, v in proposed.items()})  # must be valid settings
        described = service.describe()
        machine = described.get("machine", {})
    finally:
        await service.stop()
    result = Calibration(
        machine={**machine, "dtypes": described.get("dtypes", {})},
        settings={
            "generator": settings.generator.model,
            "max_tokens": max_tokens,
            "context_tokens": settings.retriever.context_tokens,
            "top_k": settings.retriever.top_k,
            "mode": settings.retriever.mode,
            "max_in_flight": concurrency,
            "headroom": headroom,
        },
        single=single.describe(),
        concurrent=concurrent.describe(),
        p99_ms=p99,
        proposed_ms=proposed,
        kept=[],
        at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=round(time.perf_counter() - started, 1),
    )
    return result, fingerprint(settings)
