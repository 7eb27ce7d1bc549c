"""The pipeline's budget and fallback logic, tested directly: the real encoder, FAISS index and SQLite
full-text index, with the test-only delays wrapped around them (``testing.faults.delayed``) to make a
stage late on purpose. No HTTP, no vLLM: ``search`` runs embed and retrieve only. Also: what the
runtime owns (the ingestion worker) and the rebuild thread's CPU priority."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import BudgetSettings, Settings
from rag_service.embedding.encoder import Encoder
from rag_service.errors import DeadlineExceeded
from rag_service.index.live import LiveIndex
from rag_service.ingestion.corpus import python_reference_topics
from rag_service.ingestion.ingestor import Ingestor, chunker_for, open_or_create
from rag_service.pipeline.pipeline import Pipeline, SearchResult
from rag_service.prompting.prompt import PromptBuilder
from rag_service.retrieval.passages import PassageSearch
from rag_service.runtime.components import LocalIndex
from rag_service.runtime.service import Service
from rag_service.storage.lexical import FTS_TABLE
from rag_service.testing.faults import FaultDelays, delayed

QUESTION = "What happens when a break statement is executed inside a loop?"
# Generous except where a test breaks one on purpose: a loaded 2-core machine must not fail the others.
BUDGETS = BudgetSettings(
    embed_ms=2000, retrieve_ms=1000, first_token_ms=60000, generate_ms=90000, total_ms=120000
)


def _settings(settings: Settings, **budgets: float) -> Settings:
    return settings.model_copy(update={"budget": BUDGETS.model_copy(update=budgets)})


def _search(
    settings: Settings,
    encoder: Encoder,
    passages: PassageSearch,
    delays: FaultDelays,
    mode: str = "hybrid",
) -> tuple[SearchResult | DeadlineExceeded, Pipeline]:
    async def run() -> tuple[SearchResult | DeadlineExceeded, Pipeline]:
        pipeline = Pipeline(encoder, passages, generator=None, settings=settings)  # type: ignore[arg-type]
        try:
            result: SearchResult | DeadlineExceeded = await delayed(pipeline, delays).search(
                QUESTION,
                5,
                mode=mode,  # type: ignore[arg-type]
            )
        except DeadlineExceeded as exc:
            result = exc
        finally:
            await pipeline.close()
        return result, pipeline

    return asyncio.run(run())


def _count(pipeline: Pipeline, counter: str, label: str) -> float:
    return float(pipeline.metrics.registry.get_sample_value(counter + "_total", {"reason": label}) or 0)


def test_on_time_hybrid_search_fuses_both_lists(settings: Settings, encoder: Encoder, passages) -> None:
    result, _ = _search(_settings(settings), encoder, passages, FaultDelays())
    assert isinstance(result, SearchResult)
    assert result.retrieval.describe() == {"mode": "hybrid", "fallback": None, "reason": None}
    assert result.hits[0].passage.doc_id == "pyref:break"
    assert set(result.timings_ms) >= {"embed", "retrieve", "retrieve_dense", "retrieve_lexical", "total"}


def test_a_late_embedding_falls_back_to_the_lexical_list(
    settings: Settings, encoder: Encoder, passages
) -> None:
    result, pipeline = _search(_settings(settings, embed_ms=50), encoder, passages, FaultDelays(embed=0.3))
    assert isinstance(result, SearchResult)
    assert result.retrieval.describe() == {"mode": "hybrid", "fallback": "lexical", "reason": "embed_late"}
    assert result.hits and all("lexical" in h.retrievers for h in result.hits)
    assert _count(pipeline, "rag_retrieval_fallbacks", "embed_late") == 1


def test_a_late_embedding_fails_a_dense_search(settings: Settings, encoder: Encoder, passages) -> None:
    result, pipeline = _search(
        _settings(settings, embed_ms=50), encoder, passages, FaultDelays(embed=0.3), mode="dense"
    )
    assert isinstance(result, DeadlineExceeded) and result.stage == "embed"
    assert pipeline.metrics.registry.get_sample_value("rag_stage_timeouts_total", {"stage": "embed"}) == 1


def test_a_late_lexical_side_falls_back_to_the_dense_list(
    settings: Settings, encoder: Encoder, passages
) -> None:
    result, pipeline = _search(
        _settings(settings, retrieve_ms=200), encoder, passages, FaultDelays(lexical=0.5)
    )
    assert isinstance(result, SearchResult)
    assert result.retrieval.describe() == {"mode": "hybrid", "fallback": "dense", "reason": "lexical_late"}
    assert result.hits[0].passage.doc_id == "pyref:break"
    assert all(set(h.retrievers) == {"dense"} for h in result.hits)
    assert _count(pipeline, "rag_retrieval_fallbacks", "lexical_late") == 1


def test_a_late_dense_search_fails_the_retrieve_stage(settings: Settings, encoder: Encoder, passages) -> None:
    result, _ = _search(
        _settings(settings, retrieve_ms=100), encoder, passages, FaultDelays(retrieve=0.4), mode="dense"
    )
    assert isinstance(result, DeadlineExceeded) and result.stage == "retrieve"


def test_a_failing_full_text_index_falls_back_to_the_dense_list(
    tmp_path: Path, default_index_dir: Path, settings: Settings, encoder: Encoder, prompts: PromptBuilder
) -> None:
    """A real database error (the FTS5 table is gone), not a simulated one."""
    folder = tmp_path / "broken"
    shutil.copytree(default_index_dir, folder)
    live = LiveIndex.open(folder, encoder.index_spec(), settings.index)
    try:
        db = sqlite3.connect(live.store.path)
        db.execute(f"DROP TABLE {FTS_TABLE}")
        db.commit()
        db.close()
        result, pipeline = _search(
            _settings(settings), encoder, PassageSearch(live, prompts, settings.retriever), FaultDelays()
        )
    finally:
        live.close()
    assert isinstance(result, SearchResult)
    assert result.retrieval.describe() == {"mode": "hybrid", "fallback": "dense", "reason": "lexical_failed"}
    assert _count(pipeline, "rag_retrieval_fallbacks", "lexical_failed") == 1


def test_the_rebuild_thread_runs_at_the_ingestion_niceness(tmp_path: Path, encoder: Encoder) -> None:
    settings = Settings()
    live = open_or_create(tmp_path / "idx", encoder, settings)
    live.close()
    live = LiveIndex.open(tmp_path / "idx", live.spec, settings.index, background_nice=7)
    try:
        docs = [d for d in python_reference_topics() if d.id in ("pyref:pass", "pyref:break")]
        Ingestor(live, encoder, chunker_for(encoder, settings)).upsert(docs)
        seen: list[int] = []
        real = live.store.live_embeddings

        def recording(vector_ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return real(vector_ids)

        live.store.live_embeddings = recording  # type: ignore[method-assign]
        live.start_rebuild().join(timeout=60)
    finally:
        live.close()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen and all(nice == max(base, 7) for nice in seen), (seen, base)


def test_the_service_owns_and_stops_the_ingestion_worker(
    tmp_path: Path, default_index_dir: Path, settings: Settings, encoder: Encoder, prompts: PromptBuilder
) -> None:
    shutil.copytree(default_index_dir, tmp_path / settings.index.name)
    service = Service(
        settings.model_copy(update={"index": settings.index.model_copy(update={"dir": tmp_path})})
    )
    service._load_index(encoder, prompts)  # what start() does once the encoder is loaded
    index = service.index
    assert isinstance(index, LocalIndex)
    worker = index.worker
    assert worker.live is index.live
    asyncio.run(service.stop())
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(worker.delete("pyref:pass"))  # its thread is gone: nothing runs after stop
