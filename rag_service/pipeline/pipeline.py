"""One question through embed -> retrieve -> generate, under one deadline and a budget per stage.

Every stage runs through ``Stage``: it times the stage, records it (``timings_ms`` and the
``rag_stage_seconds`` histogram) and enforces its budget, capped by what is left of the request's
deadline. How each overrun ends:

- embed, retrieve: a thread running a CPU stage cannot be killed, so these are enforced by refusing
  work that cannot finish in time (no time left -> not started; the embedding queue drops expired
  questions) and by measuring; over budget -> ``DeadlineExceeded`` (HTTP 504 naming the stage),
  except a late embedding in a hybrid search (below).
- first token late, or generation over its budget: the request is aborted in vLLM and the answer is
  *degraded*, not failed: the text so far (possibly none) plus the sources, with the stage named.

Retrieval modes (``RetrievalMode``): ``dense`` embeds the question and searches the HNSW graph;
``lexical`` skips the embed stage and searches the FTS5 index; ``hybrid`` embeds, then runs both
searches at once in worker threads (SQLite releases the GIL while it works, FAISS too) and fuses them.
Each search's time is recorded as ``retrieve_dense`` / ``retrieve_lexical`` inside ``retrieve``. The
lexical side of a hybrid search must be done by ``LEXICAL_SHARE`` of the retrieve budget; if it is
not (or fails), the dense list is used alone and the result says so (``SearchOutcome.fallback``), rather
than failing a request that has good passages in hand. The other way round, a hybrid search whose
embedding misses the embed budget goes on with the lexical search alone (``fallback="lexical"``,
reason ``embed_late``), which needs no vector, when the request's deadline leaves time for it.

``ask_stream`` is the single code path: it yields text deltas and then one final ``Answer``; ``ask``
just collects it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from rag_service.config import BudgetSettings, RetrievalMode, Settings
from rag_service.domain import Context, GenerationChunk, Hit, Sampling, SearchOutcome, Usage
from rag_service.embedding.encoder import Encoder
from rag_service.embedding.query_batcher import QueryBatcher
from rag_service.errors import DeadlineExceeded, InvalidRequest
from rag_service.generation.generator import Generator
from rag_service.retrieval.passages import DENSE, LEXICAL, PassageSearch
from rag_service.runtime.metrics import Metrics
from rag_service.testing.faults import DelayedGenerator, FaultDelays

log = logging.getLogger(__name__)
T = TypeVar("T")

BUDGET_FINISH_REASON = "budget"  # finish_reason of an answer cut short by a budget
# A hybrid search's lexical side must finish within this share of the retrieve stage's time; the rest
# is kept for fusion, packing and prompt assembly (about a millisecond each at the defaults).
LEXICAL_SHARE = 0.8
EMBED_LATE = "embed_late"  # the fallback reason when a hybrid search goes on without its embedding
MIN_FALLBACK_S = 0.001  # the least time left in the request for that lexical search to be tried


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
    deadline: Deadline
    budgets: BudgetSettings
    faults: FaultDelays | None = None
    mode: RetrievalMode = "hybrid"
    request_id: str = field(default_factory=lambda: f"rag-{uuid.uuid4().hex}")
    # Optional, set by the OpenAI-compatible chat API (see rag_service/prompting/plans.py):
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
    degraded: bool = False
    degraded_reason: str | None = None  # the stage whose budget cut the answer: first_token, generate
    retrieval: SearchOutcome | None = None  # None for plain chat (no retrieval)


@dataclass(slots=True)
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float]
    retrieval: SearchOutcome


async def _next_chunk(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


class Pipeline:
    def __init__(
        self,
        encoder: Encoder,
        retriever: PassageSearch,
        generator: Generator,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.encoder = encoder
        self.retriever = retriever
        self.prompts = retriever.prompts
        self.generator = generator
        self.settings = settings
        self.metrics = metrics or Metrics()
        batching = settings.batching
        self.batcher = QueryBatcher(
            encoder.encode_queries,
            max_batch_size=batching.max_batch_size if batching.enabled else 1,
            max_wait_ms=batching.max_wait_ms if batching.enabled else 0.0,
            on_batch=self.metrics.embed_batch.observe,
            on_drop=self.metrics.embed_dropped.inc,
        )
        self.metrics.watch(self.metrics.embed_queue, lambda: self.batcher.queued)

    def new_deadline(self, deadline_ms: float | None = None) -> Deadline:
        """The request's deadline: the server's total, or a tighter one the client asked for."""
        budget = self.settings.budget
        total = budget.total_ms if deadline_ms is None else deadline_ms
        return Deadline(total, reserve_ms=budget.reply_reserve_ms)

    async def _embed(self, text: str, stage: Stage, faults: FaultDelays | None) -> np.ndarray:
        if faults is not None and faults.embed:
            await asyncio.sleep(faults.embed)  # test-only delay before the real encoder
        return await self.batcher.embed(text, deadline=stage.ends_at)

    async def _vector_for(
        self,
        mode: RetrievalMode,
        text: str,
        timer: RequestTimer,
        budgets: BudgetSettings,
        faults: FaultDelays | None,
    ) -> np.ndarray | None:
        """The embed stage, which a lexical search does without (None). A hybrid search survives a
        late embedding too: None, and ``_search`` goes on lexically while the deadline has time left."""
        if mode == "lexical":
            return None
        try:
            with timer.stage("embed", budgets.embed_ms) as stage:
                return await stage.run(self._embed(text, stage, faults))
        except DeadlineExceeded:
            if mode != "hybrid" or timer.deadline.remaining_s() < MIN_FALLBACK_S:
                raise  # (a request whose deadline ended the embed stage has no time for a search)
            log.warning("embedding over its budget (%s ms): searching lexically only", budgets.embed_ms)
            self.metrics.fallbacks.labels(EMBED_LATE).inc()
            return None

    def _count_timeout(self, exc: DeadlineExceeded, timer: RequestTimer) -> None:
        """A stage over budget that fails the request (a 504): counted, and logged with what it took."""
        self.metrics.timeouts.labels(exc.stage).inc()
        log.warning("%s stage over budget: 504; timings so far %s ms", exc.stage, timer.ms)

    async def _timed(self, timer: RequestTimer, name: str, work: Awaitable[list[Hit]]) -> list[Hit]:
        started = time.monotonic()
        try:
            return await work
        finally:  # also when abandoned (a late lexical side): how long it had run
            timer.record(name, time.monotonic() - started)

    async def _dense(self, vector: np.ndarray, k: int, faults: FaultDelays | None) -> list[Hit]:
        if faults is not None and faults.retrieve:
            await asyncio.sleep(faults.retrieve)  # test-only delay before the real index
        # In a worker thread: a search may wait (briefly) for an ingestion add holding the index's
        # write lock, and the event loop must keep streaming other answers meanwhile.
        return await asyncio.to_thread(self.retriever.search, vector, k)

    async def _lexical(self, text: str, k: int, until: float, faults: FaultDelays | None) -> list[Hit]:
        if faults is not None and faults.lexical:
            await asyncio.sleep(faults.lexical)  # test-only delay before the real full-text index
        # ``until`` stops the query inside SQLite, so an abandoned search does not keep a core busy.
        return await asyncio.to_thread(self.retriever.search_text, text, k, until=until)

    async def _search(
        self,
        text: str,
        vector: np.ndarray | None,
        top_k: int,
        mode: RetrievalMode,
        stage: Stage,
        timer: RequestTimer,
        faults: FaultDelays | None,
    ) -> SearchOutcome:
        """The passages for one query in ``mode``, within ``stage`` (see the module's docstring)."""
        if vector is None:  # lexical mode, or a hybrid search whose embedding was late (``_vector_for``)
            hits = await self._timed(
                timer, "retrieve_lexical", self._lexical(text, top_k, stage.ends_at, faults)
            )
            if mode == "lexical":
                return SearchOutcome(hits, mode)
            return SearchOutcome(hits, mode, fallback=LEXICAL, reason=EMBED_LATE)
        if mode == "dense":
            hits = await self._timed(timer, "retrieve_dense", self._dense(vector, top_k, faults))
            return SearchOutcome(hits, mode)
        depth = self.retriever.candidates(top_k)
        cutoff = stage.started + (stage.ends_at - stage.started) * LEXICAL_SHARE
        lexical = asyncio.ensure_future(
            self._timed(timer, "retrieve_lexical", self._lexical(text, depth, cutoff, faults))
        )
        try:
            dense = await self._timed(timer, "retrieve_dense", self._dense(vector, depth, faults))
        except BaseException:
            lexical.cancel()
            raise
        reason: str | None = None
        try:
            lexical_hits = await asyncio.wait_for(lexical, max(0.0, cutoff - time.monotonic()))
        except TimeoutError:
            reason = "lexical_late"
        except sqlite3.OperationalError as exc:  # "interrupted" at the cutoff, or a database error
            reason = "lexical_late" if "interrupt" in str(exc) else "lexical_failed"
            if reason == "lexical_failed":
                log.warning("lexical search failed, answering from the dense list: %s", exc)
        if reason is not None:
            self.metrics.fallbacks.labels(reason).inc()
            return SearchOutcome(dense[:top_k], mode, fallback=DENSE, reason=reason)
        return SearchOutcome(self.retriever.fuse(dense, lexical_hits, top_k), mode)

    async def _retrieve(
        self, req: AskRequest, vector: np.ndarray | None, stage: Stage, timer: RequestTimer
    ) -> tuple[SearchOutcome, Context, list[int]]:
        """Search, packing and prompt assembly: the whole retrieve stage, under its budget."""
        found = await self._search(req.question, vector, req.top_k, req.mode, stage, timer, req.faults)
        context = self.retriever.pack(found.hits, req.context_budget)
        return found, context, self._prompt(req, context)

    def _prompt(self, req: AskRequest, context: Context) -> list[int]:
        if req.build_prompt is not None:  # a whole conversation (rag_service/prompting/plans.py)
            return req.build_prompt(context.hits)
        return self.prompts.build(req.question_ids, context.hits)

    async def search(
        self,
        query: str,
        top_k: int,
        deadline: Deadline | None = None,
        faults: FaultDelays | None = None,
        mode: RetrievalMode | None = None,
    ) -> SearchResult:
        timer = RequestTimer(deadline or self.new_deadline(), self.metrics)
        budgets = self.settings.budget
        mode = mode or self.settings.retriever.mode
        if faults is not None and faults.admitted:
            await asyncio.sleep(faults.admitted)
        try:
            vector = await self._vector_for(mode, query, timer, budgets, faults)
            with timer.stage("retrieve", budgets.retrieve_ms) as stage:
                found = await stage.run(self._search(query, vector, top_k, mode, stage, timer, faults))
        except DeadlineExceeded as exc:
            self._count_timeout(exc, timer)
            raise
        return SearchResult(found.hits, timer.finish(), found)

    def new_request(
        self,
        question: str,
        *,
        top_k: int,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        deadline: Deadline | None = None,
        budgets: BudgetSettings | None = None,
        faults: FaultDelays | None = None,
        mode: RetrievalMode | None = None,
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
        return AskRequest(
            question,
            question_ids,
            top_k,
            max_tokens,
            temperature,
            stop,
            context_budget=budget,
            deadline=deadline or self.new_deadline(),
            budgets=budgets or self.settings.budget,
            faults=faults,
            mode=mode or self.settings.retriever.mode,
        )

    async def ask_stream(self, req: AskRequest) -> AsyncGenerator[str | Answer, None]:
        """Yields answer text deltas (str), then exactly one ``Answer``."""
        timer = RequestTimer(req.deadline, self.metrics)
        budgets, faults = req.budgets, req.faults
        if faults is not None and faults.admitted:
            await asyncio.sleep(faults.admitted)
        found: SearchOutcome | None = None
        try:
            if req.retrieve:
                vector = await self._vector_for(req.mode, req.question, timer, budgets, faults)
                with timer.stage("retrieve", budgets.retrieve_ms) as stage:
                    found, context, prompt_ids = await stage.run(self._retrieve(req, vector, stage, timer))
            else:  # plain chat (OpenAI API with retrieval off): no passages
                context = Context(hits=[], tokens=0, budget=0)
                prompt_ids = self._prompt(req, context)
        except DeadlineExceeded as exc:
            self._count_timeout(exc, timer)
            raise

        usage = Usage(prompt_tokens=len(prompt_ids), context_tokens=context.tokens)
        self.metrics.context_tokens.observe(context.tokens)
        generator = self.generator
        if faults is not None and faults.slows_generation:
            generator = DelayedGenerator(self.generator, faults)
        parts: list[str] = []
        finish_reason: str | None = None
        degraded_reason: str | None = None
        with timer.stage("generate", budgets.generate_ms) as generate:
            first_token = generate.sub("first_token", budgets.first_token_ms, req.deadline)
            chunks = generator.stream(
                prompt_ids,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                stop=req.stop,
                request_id=req.request_id,
                sampling=req.sampling,
            )
            # aclosing: however this ends (budget, client gone), the engine request is aborted now.
            async with aclosing(chunks):
                try:
                    while True:
                        # Until the first token the tighter first_token budget applies.
                        stage = generate if parts else first_token
                        chunk = await stage.run(_next_chunk(chunks))
                        if chunk is None:
                            break
                        if not parts and chunk.text:
                            timer.mark("first_token")
                        usage.completion_tokens = chunk.completion_tokens
                        finish_reason = chunk.finish_reason or finish_reason
                        if chunk.text:
                            parts.append(chunk.text)
                            yield chunk.text
                except DeadlineExceeded as exc:
                    # Cancelling the pending chunk closed the stream, which aborted it in vLLM.
                    degraded_reason, finish_reason = exc.stage, BUDGET_FINISH_REASON
                    self.metrics.aborts.labels(exc.stage).inc()
                    self.metrics.degraded.labels(exc.stage).inc()
                except (GeneratorExit, asyncio.CancelledError):
                    self.metrics.aborts.labels("client_disconnect").inc()
                    raise
        self.metrics.generated_tokens.observe(usage.completion_tokens)
        answer = Answer(
            req.request_id,
            "".join(parts).strip(),
            context,
            usage,
            timer.finish(),
            finish_reason,
            degraded=degraded_reason is not None,
            degraded_reason=degraded_reason,
            retrieval=found,
        )
        log.info(
            "answered %s: %s ms, %d context + %d prompt tokens, %d generated (%s)%s",
            req.request_id,
            answer.timings_ms,
            context.tokens,
            usage.prompt_tokens,
            usage.completion_tokens,
            finish_reason,
            f", degraded: {degraded_reason} over budget" if degraded_reason else "",
        )
        yield answer

    async def ask(self, req: AskRequest) -> Answer:
        async for item in self.ask_stream(req):
            if isinstance(item, Answer):
                return item
        raise RuntimeError("pipeline ended without an answer")

    async def close(self) -> None:
        await self.batcher.close()
