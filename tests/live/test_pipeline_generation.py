"""The pipeline's generation budgets, tested directly (no HTTP): the real encoder, index and a real
vLLM engine started in this process, with the test-only delay wrapped around the engine
(``DelayedGenerator``, via ``testing.faults.delayed``) to make the first token or the answer late on
purpose. Marked ``vllm`` automatically (it starts ``VllmGenerator``)."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from rag_service.config import BudgetSettings, Settings
from rag_service.embedding.encoder import Encoder
from rag_service.generation.generator import VllmGenerator
from rag_service.pipeline.pipeline import Answer, Pipeline
from rag_service.retrieval.passages import PassageSearch
from rag_service.runtime.service import Service
from rag_service.testing.faults import FaultDelays, delayed

QUESTION = "What happens when a break statement is executed inside a loop?"
LOOSE = BudgetSettings(
    embed_ms=2000, retrieve_ms=1000, first_token_ms=60000, generate_ms=90000, total_ms=120000
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module: the engine's output task lives on the loop it first ran on."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def pipeline(
    settings: Settings, encoder: Encoder, passages: PassageSearch, loop: asyncio.AbstractEventLoop
) -> Iterator[Pipeline]:
    # Starting vLLM here changes this process's environment (its thread binding, LD_PRELOAD for its
    # workers); servers that later tests start inherit the environment, so it is put back after.
    environment = dict(os.environ)
    service = Service(settings)
    service.resolve_hardware()  # the dtype this machine runs (what the server would use)
    generator = VllmGenerator.start(service.generator_settings)
    pipeline = Pipeline(encoder, passages, generator, settings)
    try:
        yield pipeline
    finally:
        loop.run_until_complete(pipeline.close())
        generator.shutdown()
        loop.run_until_complete(asyncio.sleep(0))
        gc.collect()  # frees the engine now (its core process ends), not at interpreter exit
        os.environ.clear()
        os.environ.update(environment)


def _ask(
    loop: asyncio.AbstractEventLoop, pipeline: Pipeline, delays: FaultDelays, **budgets: float
) -> Answer:
    req = pipeline.new_request(
        QUESTION,
        top_k=3,
        max_tokens=96,
        temperature=0.0,
        stop=[],
        budgets=LOOSE.model_copy(update=budgets),
        deadline=pipeline.new_deadline(LOOSE.total_ms),
    )
    return loop.run_until_complete(delayed(pipeline, delays).ask(req))


def _engine_idle(loop: asyncio.AbstractEventLoop, pipeline: Pipeline) -> bool:
    """The engine holds no request (an abort takes effect within moments)."""

    async def wait() -> bool:
        for _ in range(100):
            if pipeline.generator.unfinished_requests == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    return loop.run_until_complete(wait())


def _count(pipeline: Pipeline, counter: str, **labels: str) -> float:
    return float(pipeline.metrics.registry.get_sample_value(counter + "_total", labels) or 0)


def test_an_answer_within_its_budgets(loop: asyncio.AbstractEventLoop, pipeline: Pipeline) -> None:
    answer = _ask(loop, pipeline, FaultDelays())
    assert not answer.degraded and answer.finish_reason in ("stop", "length")
    assert answer.text and answer.context.hits[0].passage.doc_id == "pyref:break"
    assert answer.usage.completion_tokens > 0 and answer.timings_ms["first_token"] > 0


def test_a_late_first_token_is_a_degraded_sources_only_answer(
    loop: asyncio.AbstractEventLoop, pipeline: Pipeline
) -> None:
    answer = _ask(loop, pipeline, FaultDelays(first_token=5.0), first_token_ms=300)
    assert answer.degraded and answer.degraded_reason == "first_token"
    assert answer.finish_reason == "budget" and answer.text == ""
    assert answer.context.hits and answer.context.hits[0].passage.doc_id == "pyref:break"
    assert _count(pipeline, "rag_generation_aborts", reason="first_token") >= 1
    assert _engine_idle(loop, pipeline)  # aborted in vLLM


def test_a_slow_answer_is_cut_at_its_generate_budget(
    loop: asyncio.AbstractEventLoop, pipeline: Pipeline
) -> None:
    answer = _ask(loop, pipeline, FaultDelays(token=0.1), generate_ms=1500)
    assert answer.degraded and answer.degraded_reason == "generate" and answer.finish_reason == "budget"
    assert answer.text and 0 < answer.usage.completion_tokens < 96
    assert 1400 <= answer.timings_ms["generate"] < 3000
    assert _count(pipeline, "rag_degraded_answers", stage="generate") >= 1


def test_closing_the_stream_aborts_the_generation(
    loop: asyncio.AbstractEventLoop, pipeline: Pipeline
) -> None:
    """What a client that hangs up causes: the stream is closed after its first delta."""

    async def first_delta_then_close() -> str:
        req = pipeline.new_request(QUESTION, top_k=3, max_tokens=96, temperature=0.0, stop=[], budgets=LOOSE)
        slow = delayed(pipeline, FaultDelays(token=0.05))
        async with aclosing(slow.ask_stream(req)) as items:
            async for item in items:
                assert isinstance(item, str)
                return item
        raise AssertionError("no delta")

    before = _count(pipeline, "rag_generation_aborts", reason="client_disconnect")
    assert loop.run_until_complete(first_delta_then_close())
    assert _count(pipeline, "rag_generation_aborts", reason="client_disconnect") == before + 1
    assert _engine_idle(loop, pipeline)
