"""Fault injection for tests only: added delays around the REAL stages, so budget tests are deterministic.

Nothing here replaces a component: the real encoder, index and vLLM still do their work; a delay is
only added before it (or before each generated token), which is how a test makes "this stage ran
late" happen on purpose. The delays are wrappers of the pipeline's components (``delayed``), made for
one request; the pipeline itself knows nothing of them. Over HTTP they are active only when
``RAG_FAULTS__ENABLED=true`` (the test server sets it) and then read per request from the header
``X-Rag-Fault-Delay: embed=500,token=200`` (milliseconds), so one shared test server can serve both
plain and delayed requests; tests of the pipeline itself call ``delayed`` directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace

import numpy as np

from rag_service.config import RetrievalMode
from rag_service.domain import GenerationChunk, Hit, Sampling
from rag_service.errors import InvalidRequest
from rag_service.generation.generator import Generator
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import Answer, AnswerRequest, Embedder, Pipeline, Searcher, SearchResult

HEADER = "x-rag-fault-delay"


@dataclass(frozen=True, slots=True)
class FaultDelays:
    """Seconds added before each point: ``admitted`` (after admission, before the pipeline),
    ``embed``, ``retrieve`` (inside those stages), ``lexical`` (before the full-text search only, inside
    retrieve: the dense side is on time), ``first_token`` and ``token`` (before the first / each later
    generated token reaches the pipeline; vLLM keeps generating meanwhile)."""

    admitted: float = 0.0
    embed: float = 0.0
    retrieve: float = 0.0
    lexical: float = 0.0
    first_token: float = 0.0
    token: float = 0.0

    @classmethod
    def parse(cls, header: str) -> FaultDelays:
        values: dict[str, float] = {}
        for part in header.split(","):
            name, _, ms = part.partition("=")
            name = name.strip()
            if name not in cls.__dataclass_fields__:
                raise InvalidRequest(f"unknown fault-delay point {name!r}", param=HEADER)
            try:
                values[name] = float(ms) / 1000
            except ValueError:
                raise InvalidRequest(f"fault delay {part!r} is not name=milliseconds", param=HEADER) from None
        return cls(**values)

    @property
    def slows_generation(self) -> bool:
        return self.first_token > 0 or self.token > 0


def delayed(pipeline: Pipeline, delays: FaultDelays) -> Pipeline:
    """``pipeline`` for one request, its components wrapped with ``delays`` (those that have one)."""
    view = pipeline.with_components(
        embedder=DelayedEmbedder(pipeline.embedder, delays.embed) if delays.embed else None,
        searcher=DelayedSearcher(pipeline.searcher, delays) if delays.retrieve or delays.lexical else None,
        generator=DelayedGenerator(pipeline.generator, delays) if delays.slows_generation else None,
    )
    if not delays.admitted:
        return view
    late: DelayedPipeline = object.__new__(DelayedPipeline)
    late.__dict__.update(view.__dict__)
    late.admitted_delay = delays.admitted
    return late


class DelayedPipeline(Pipeline):
    """Starts each request ``admitted_delay`` seconds late (after admission, before any stage)."""

    admitted_delay: float

    async def search(
        self, query: str, top_k: int, deadline: Deadline | None = None, mode: RetrievalMode | None = None
    ) -> SearchResult:
        await asyncio.sleep(self.admitted_delay)
        return await super().search(query, top_k, deadline, mode)

    async def ask_stream(self, req: AnswerRequest) -> AsyncGenerator[str | Answer, None]:
        await asyncio.sleep(self.admitted_delay)
        async with aclosing(super().ask_stream(req)) as items:  # closed with this one: aborts in vLLM
            async for item in items:
                yield item


class DelayedEmbedder:
    """The real embedder (the query batcher), ``seconds`` late."""

    def __init__(self, real: Embedder, seconds: float) -> None:
        self._real = real
        self._seconds = seconds

    async def embed(self, text: str, deadline: float | None = None) -> np.ndarray:
        await asyncio.sleep(self._seconds)
        return await self._real.embed(text, deadline)


class DelayedSearcher(Searcher):
    """The real searches: the dense one ``retrieve`` late, the full-text one ``lexical`` late."""

    def __init__(self, real: Searcher, delays: FaultDelays) -> None:
        super().__init__(real.passages)
        self._real = real
        self._delays = delays

    async def dense(self, vector: np.ndarray, k: int) -> list[Hit]:
        await asyncio.sleep(self._delays.retrieve)
        return await self._real.dense(vector, k)

    async def lexical(self, text: str, k: int, until: float) -> list[Hit]:
        await asyncio.sleep(self._delays.lexical)
        return await self._real.lexical(text, k, until)


class DelayedGenerator:
    """The real generator, with a ``first_token`` delay before its first token and a ``token`` delay
    before each later one. Two things keep the delays meaningful on a fast engine: vLLM hands a slow
    reader all tokens generated since its last read in one chunk, so a chunk of k tokens is released
    as k pieces, one per delay (its text cut evenly: the pieces are not exact token boundaries); and
    the real engine is asked for all ``max_tokens`` (``min_tokens``), so a delayed answer cannot end on
    its own before the budget that the test is about."""

    def __init__(self, real: Generator, delays: FaultDelays) -> None:
        self._real = real
        self._delays = delays

    async def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        request_id: str,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        chunks = self._real.stream(
            prompt_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            request_id=request_id,
            sampling=replace(sampling or Sampling(), min_tokens=max_tokens),
        )
        released = 0  # tokens handed on so far
        try:
            async for chunk in chunks:
                for piece in _pieces(chunk, released):
                    await asyncio.sleep(self._delays.first_token if released == 0 else self._delays.token)
                    released = piece.completion_tokens
                    yield piece
        finally:
            await chunks.aclose()  # closing the real stream aborts the request in vLLM

    @property
    def healthy(self) -> bool:
        return self._real.healthy

    @property
    def unfinished_requests(self) -> int:
        return self._real.unfinished_requests

    async def reset_prefix_cache(self) -> None:
        await self._real.reset_prefix_cache()

    def shutdown(self) -> None:
        self._real.shutdown()


def _pieces(chunk: GenerationChunk, released: int) -> list[GenerationChunk]:
    """``chunk`` as one piece per new token (its text cut evenly), the finish reason on the last."""
    count = max(1, chunk.completion_tokens - released)
    size = -(-len(chunk.text) // count) if chunk.text else 0
    pieces = []
    for i in range(count):
        pieces.append(
            GenerationChunk(
                text=chunk.text[i * size : (i + 1) * size] if size else "",
                finish_reason=chunk.finish_reason if i == count - 1 else None,
                prompt_tokens=chunk.prompt_tokens,
                completion_tokens=min(released + i + 1, chunk.completion_tokens) or chunk.completion_tokens,
            )
        )
    return pieces
