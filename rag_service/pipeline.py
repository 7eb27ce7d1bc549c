"""One question through embed -> retrieve -> generate, timing every stage.

``ask_stream`` is the single code path: it yields text deltas and then one final ``Answer``;
``ask`` just collects it. Stages that run on the CPU (the encoder) run in a worker thread so the
event loop keeps serving other requests and streaming tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field

import numpy as np

from rag_service.config import Settings
from rag_service.encoder import Encoder
from rag_service.errors import InvalidRequest
from rag_service.generator import Generator
from rag_service.retriever import Retriever
from rag_service.types import Context, Hit, Sampling, Usage

log = logging.getLogger(__name__)


class StageTimer:
    """Wall-clock milliseconds per stage, plus the total since the request started."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - start) * 1000, 2)

    def mark(self, name: str) -> None:
        """Milliseconds from the request's start until now (e.g. the first token)."""
        self.ms[name] = round((time.perf_counter() - self._started) * 1000, 2)

    def finish(self) -> dict[str, float]:
        self.mark("total")
        return dict(self.ms)


@dataclass(slots=True)
class AskRequest:
    """A validated question; build it with ``Pipeline.new_request`` so the context budget is known."""

    question: str
    question_ids: list[int]
    top_k: int
    max_tokens: int
    temperature: float
    stop: list[str]
    context_budget: int
    request_id: str = field(default_factory=lambda: f"rag-{uuid.uuid4().hex}")
    # Optional, set by the OpenAI-compatible chat API (see rag_service/chat.py):
    # the prompt of a whole conversation built from the packed passages (None: the one-question prompt),
    build_prompt: Callable[[Sequence[Hit]], list[int]] | None = None
    # False for plain chat: no embed or retrieve stage, no passages,
    retrieve: bool = True
    # and sampling controls beyond temperature (vLLM's defaults when None).
    sampling: Sampling | None = None


@dataclass(slots=True)
class Answer:
    request_id: str
    text: str
    context: Context
    usage: Usage
    timings_ms: dict[str, float]
    finish_reason: str | None


@dataclass(slots=True)
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float]


class Pipeline:
    def __init__(
        self, encoder: Encoder, retriever: Retriever, generator: Generator, settings: Settings
    ) -> None:
        self.encoder = encoder
        self.retriever = retriever
        self.prompts = retriever.prompts
        self.generator = generator
        self.settings = settings

    async def _embed(self, text: str) -> np.ndarray:
        vectors = await asyncio.to_thread(self.encoder.encode_queries, [text])
        return vectors[0]

    async def search(self, query: str, top_k: int) -> SearchResult:
        timer = StageTimer()
        with timer.stage("embed"):
            vector = await self._embed(query)
        with timer.stage("retrieve"):
            hits = self.retriever.search(vector, top_k)
        return SearchResult(hits, timer.finish())

    def new_request(
        self, question: str, *, top_k: int, max_tokens: int, temperature: float, stop: list[str]
    ) -> AskRequest:
        """Checks the question fits the model and fixes the passages' token budget: the configured
        one, capped by what the context holds after the prompt's own tokens and the answer."""
        question_ids = self.prompts.encode(question)
        overhead = self.prompts.question_overhead(question_ids)
        room = self.settings.generator.max_model_len - max_tokens - overhead
        if room <= 0:
            raise InvalidRequest(
                f"question too long: its prompt takes {overhead} tokens and the answer {max_tokens}, "
                f"over the model's context of {self.settings.generator.max_model_len}",
                code="context_length_exceeded",
                param="question",
            )
        budget = min(self.settings.retriever.context_tokens, room)
        return AskRequest(question, question_ids, top_k, max_tokens, temperature, stop, context_budget=budget)

    async def ask_stream(self, req: AskRequest) -> AsyncGenerator[str | Answer, None]:
        """Yields answer text deltas (str), then exactly one ``Answer``."""
        timer = StageTimer()
        context = Context(hits=[], tokens=0, budget=0)
        if req.retrieve:
            with timer.stage("embed"):
                vector = await self._embed(req.question)
            with timer.stage("retrieve"):
                hits = self.retriever.search(vector, req.top_k)
                context = self.retriever.pack(hits, req.context_budget)
        if req.build_prompt is not None:
            prompt_ids = req.build_prompt(context.hits)
        else:
            prompt_ids = self.prompts.build(req.question_ids, context.hits)

        usage = Usage(prompt_tokens=len(prompt_ids), context_tokens=context.tokens)
        parts: list[str] = []
        finish_reason: str | None = None
        with timer.stage("generate"):
            chunks = self.generator.stream(
                prompt_ids,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                stop=req.stop,
                request_id=req.request_id,
                sampling=req.sampling,
            )
            # aclosing: if our caller stops early, the engine request is aborted now, not at GC.
            async with aclosing(chunks):
                async for chunk in chunks:
                    if not parts and chunk.text:
                        timer.mark("first_token")
                    usage.completion_tokens = chunk.completion_tokens
                    finish_reason = chunk.finish_reason or finish_reason
                    if chunk.text:
                        parts.append(chunk.text)
                        yield chunk.text
        answer = Answer(req.request_id, "".join(parts).strip(), context, usage, timer.finish(), finish_reason)
        log.info(
            "answered %s: %s ms, %d context + %d prompt tokens, %d generated (%s)",
            req.request_id,
            answer.timings_ms,
            context.tokens,
            usage.prompt_tokens,
            usage.completion_tokens,
            finish_reason,
        )
        yield answer

    async def ask(self, req: AskRequest) -> Answer:
        async for item in self.ask_stream(req):
            if isinstance(item, Answer):
                return item
        raise RuntimeError("pipeline ended without an answer")
