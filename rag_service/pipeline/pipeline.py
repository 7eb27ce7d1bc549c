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

The answer cache (``rag_service/caching/``): after retrieval, a deterministic request whose prompt
and sampling equal a kept answer's gets that answer (``Answer.cached``, a ``cache`` timing) instead of
a generation; an identical request still generating is waited for instead of generating twice.

``ask_stream`` is the single code path: it yields text deltas and then one final ``Answer``; ``ask``
just collects it. What to retrieve with and the prompt come from the request's plan
(``rag_service/prompting/plans.py``). The components are reached through three seams, ``embedder``,
``searcher`` and ``generator``; ``with_components`` swaps them for one request (the test-only delays
of ``rag_service/testing/faults.py`` wrap the real ones that way).

Longer than 400 lines: the stages, their budgets and the answer cache meet in ``ask_stream``, the one
path of every answer, and each stage's budget rule is easier to check beside the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rag_service.caching.answers import CachedAnswer
from rag_service.caching.reuse import AnswerReuse
from rag_service.config import BudgetSettings, RetrievalMode, Settings
from rag_service.domain import Context, GenerationChunk, Hit, Sampling, SearchOutcome, Usage
from rag_service.embedding.encoder import Encoder
from rag_service.embedding.query_batcher import QueryBatcher
from rag_service.errors import DeadlineExceeded
from rag_service.generation.generator import Generator
from rag_service.pipeline.budgets import Deadline, RequestTimer, Stage
from rag_service.prompting.grounding import Grounding, judge
from rag_service.prompting.plans import PromptPlan, plan_question
from rag_service.retrieval.passages import DENSE, LEXICAL, PassageSearch
from rag_service.runtime.metrics import Metrics
from rag_service.storage.store import SearchInterrupted, StoreQueryError

log = logging.getLogger(__name__)

BUDGET_FINISH_REASON = "budget"  # finish_reason of an answer cut short by a budget
# A hybrid search's lexical side must finish within this share of the retrieve stage's time; the rest
# is kept for fusion, packing and prompt assembly (about a millisecond each at the defaults).
LEXICAL_SHARE = 0.8
# The finish reasons of a whole answer, the only ones the answer cache keeps (vLLM's "stop": EOS or
# a stop string; "length": all max_tokens written). Not "abort", nor a budget's cut.
REUSABLE_FINISH = ("stop", "length")
EMBED_LATE = "embed_late"  # the fallback reason when a hybrid search goes on without its embedding
MIN_FALLBACK_S = 0.001  # the least time left in the request for that lexical search to be tried


class Embedder(Protocol):
    """The embed stage's component: ``QueryBatcher`` (or a wrapper of it)."""

    async def embed(self, text: str, deadline: float | None = None) -> np.ndarray: ...


class Searcher:
    """The retrieve stage's component: the passage search, run in worker threads (a search may wait,
    briefly, for an ingestion add holding the index's write lock, and the event loop must keep
    streaming other answers meanwhile)."""

    def __init__(self, passages: PassageSearch) -> None:
        self.passages = passages

    async def dense(self, vector: np.ndarray, k: int) -> list[Hit]:
        return await asyncio.to_thread(self.passages.search, vector, k)

    async def lexical(self, text: str, k: int, until: float) -> list[Hit]:
        # ``until`` stops the query inside SQLite, so an abandoned search does not keep a core busy.
        return await asyncio.to_thread(self.passages.search_text, text, k, until=until)


@dataclass(slots=True)
class AnswerRequest:
    """A validated request for an answer: the plan (what to retrieve with, the prompt) and how to
    generate. Build one for a question with ``Pipeline.new_request``."""

    plan: PromptPlan
    top_k: int
    max_tokens: int
    temperature: float
    stop: list[str]
    deadline: Deadline
    budgets: BudgetSettings
    mode: RetrievalMode = "hybrid"
    request_id: str = field(default_factory=lambda: f"rag-{uuid.uuid4().hex}")
    # Sampling controls beyond temperature (vLLM's defaults when None).
    sampling: Sampling | None = None
    # False for the service's own measuring requests (warm-up, budget check, calibration): they must
    # reach the engine, so they neither read nor fill the answer cache.
    cache: bool = True


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
    retrieval: SearchOutcome | None = None  # None without passages (plain chat, raw completions)
    cached: bool = False  # the text was reused (the answer cache), not generated for this request
    # The text exactly as generated, what a stream's deltas add up to; `text` is it stripped. A text
    # completion continues its prompt, so its leading space is part of the answer (" Paris.").
    generated: str = ""
    # Whether the passages support it (prompting/grounding.py); None without passages by design.
    grounding: Grounding | None = None


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
        passages: PassageSearch,
        generator: Generator,
        settings: Settings,
        metrics: Metrics | None = None,
        answers: AnswerReuse | None = None,
    ) -> None:
        self.encoder = encoder
        self.passages = passages
        self.prompts = passages.prompts
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
        self.embedder: Embedder = self.batcher
        self.searcher = Searcher(passages)
        self.answers = answers  # the prompt-exact answer cache (None: off)

    def with_components(
        self,
        *,
        embedder: Embedder | None = None,
        searcher: Searcher | None = None,
        generator: Generator | None = None,
    ) -> Pipeline:
        """The same pipeline (settings, metrics, batcher) with some components swapped, for one request."""
        view = object.__new__(Pipeline)
        view.__dict__.update(self.__dict__)
        view.embedder = embedder or self.embedder
        view.searcher = searcher or self.searcher
        view.generator = generator or self.generator
        if generator is not None:  # another generator's answers are not the cached ones
            view.answers = None
        return view

    def new_deadline(self, deadline_ms: float | None = None) -> Deadline:
        """The request's deadline: the server's total, or a tighter one the client asked for."""
        budget = self.settings.budget
        total = budget.total_ms if deadline_ms is None else deadline_ms
        return Deadline(total, reserve_ms=budget.reply_reserve_ms)

    async def _vector_for(
        self, mode: RetrievalMode, text: str, timer: RequestTimer, budgets: BudgetSettings
    ) -> np.ndarray | None:
        """The embed stage, which a lexical search does without (None). A hybrid search survives a
        late embedding too: None, and ``_search`` goes on lexically while the deadline has time left."""
        if mode == "lexical":
            return None
        try:
            with timer.stage("embed", budgets.embed_ms) as stage:
                return await stage.run(self.embedder.embed(text, deadline=stage.ends_at))
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

    async def _search(
        self,
        text: str,
        vector: np.ndarray | None,
        top_k: int,
        mode: RetrievalMode,
        stage: Stage,
        timer: RequestTimer,
    ) -> SearchOutcome:
        """The passages for one query in ``mode``, within ``stage`` (see the module's docstring)."""
        searcher = self.searcher
        if vector is None:  # lexical mode, or a hybrid search whose embedding was late (``_vector_for``)
            hits = await self._timed(timer, "retrieve_lexical", searcher.lexical(text, top_k, stage.ends_at))
            if mode == "lexical":
                return SearchOutcome(hits, mode)
            return SearchOutcome(hits, mode, fallback=LEXICAL, reason=EMBED_LATE)
        if mode == "dense":
            hits = await self._timed(timer, "retrieve_dense", searcher.dense(vector, top_k))
            return SearchOutcome(hits, mode)
        depth = self.passages.candidates(top_k)
        cutoff = stage.started + (stage.ends_at - stage.started) * LEXICAL_SHARE
        lexical = asyncio.ensure_future(
            self._timed(timer, "retrieve_lexical", searcher.lexical(text, depth, cutoff))
        )
        try:
            dense = await self._timed(timer, "retrieve_dense", searcher.dense(vector, depth))
        except BaseException:
            lexical.cancel()
            raise
        reason: str | None = None
        try:
            lexical_hits = await asyncio.wait_for(lexical, max(0.0, cutoff - time.monotonic()))
        except (TimeoutError, SearchInterrupted):  # not done by the cutoff (or stopped by it in SQLite)
            reason = "lexical_late"
        except StoreQueryError as exc:
            reason = "lexical_failed"
            log.warning("lexical search failed, answering from the dense list: %s", exc)
        if reason is not None:
            self.metrics.fallbacks.labels(reason).inc()
            return SearchOutcome(dense[:top_k], mode, fallback=DENSE, reason=reason)
        return SearchOutcome(self.passages.fuse(dense, lexical_hits, top_k), mode)

    async def _retrieve(
        self, req: AnswerRequest, vector: np.ndarray | None, stage: Stage, timer: RequestTimer
    ) -> tuple[SearchOutcome, Context, list[int]]:
        """Search, packing and prompt assembly: the whole retrieve stage, under its budget."""
        found = await self._search(req.plan.query, vector, req.top_k, req.mode, stage, timer)
        context = self.passages.pack(found.hits, req.plan.context_budget)
        return found, context, req.plan.build_prompt(context.hits)

    async def search(
        self, query: str, top_k: int, deadline: Deadline | None = None, mode: RetrievalMode | None = None
    ) -> SearchResult:
        timer = RequestTimer(deadline or self.new_deadline(), self.metrics)
        budgets = self.settings.budget
        mode = mode or self.settings.retriever.mode
        try:
            vector = await self._vector_for(mode, query, timer, budgets)
            with timer.stage("retrieve", budgets.retrieve_ms) as stage:
                found = await stage.run(self._search(query, vector, top_k, mode, stage, timer))
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
        mode: RetrievalMode | None = None,
    ) -> AnswerRequest:
        """A question's request: its plan checks it fits the model and fixes the passages' budget."""
        plan = plan_question(
            self.prompts,
            question,
            max_model_len=self.settings.generator.max_model_len,
            max_tokens=max_tokens,
            context_tokens=self.settings.retriever.context_tokens,
        )
        return AnswerRequest(
            plan,
            top_k,
            max_tokens,
            temperature,
            stop,
            deadline=deadline or self.new_deadline(),
            budgets=budgets or self.settings.budget,
            mode=mode or self.settings.retriever.mode,
        )

    async def ask_stream(self, req: AnswerRequest) -> AsyncGenerator[str | Answer, None]:
        """Yields answer text deltas (str), then exactly one ``Answer``."""
        timer = RequestTimer(req.deadline, self.metrics)
        budgets = req.budgets
        found: SearchOutcome | None = None
        try:
            if req.plan.with_passages:
                vector = await self._vector_for(req.mode, req.plan.query, timer, budgets)
                with timer.stage("retrieve", budgets.retrieve_ms) as stage:
                    found, context, prompt_ids = await stage.run(self._retrieve(req, vector, stage, timer))
            else:  # plain chat, raw completions: no passages
                context = Context(hits=[], tokens=0, budget=0)
                prompt_ids = req.plan.build_prompt([])
        except DeadlineExceeded as exc:
            self._count_timeout(exc, timer)
            raise

        usage = Usage(prompt_tokens=len(prompt_ids), context_tokens=context.tokens)
        self.metrics.context_tokens.observe(context.tokens)
        answers = self.answers if req.cache else None  # (the service's measuring requests: never)
        key = (
            None
            if answers is None
            else answers.key(prompt_ids, req.max_tokens, req.temperature, req.stop, req.sampling)
        )
        reused: CachedAnswer | None = None
        if answers is not None and key is not None:
            try:
                reused = await answers.claim(key, timer, budgets.generate_ms)
            except DeadlineExceeded:  # waited past the generate budget for an identical answer
                self.metrics.degraded.labels("generate").inc()
                yield self._answer(req, "", context, usage, timer, BUDGET_FINISH_REASON, found, "generate")
                return
        if reused is not None:
            if reused.text:
                timer.mark("first_token")
                yield reused.text
            usage.completion_tokens = reused.completion_tokens
            yield self._answer(
                req, reused.text, context, usage, timer, reused.finish_reason, found, cached=True
            )
            return
        parts: list[str] = []
        finish_reason: str | None = None
        degraded_reason: str | None = None
        shared: CachedAnswer | None = None  # what identical requests waiting for this one get
        try:
            with timer.stage("generate", budgets.generate_ms) as generate:
                first_token = generate.sub("first_token", budgets.first_token_ms, req.deadline)
                chunks = self.generator.stream(
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
            # Only a whole answer is reused: the model stopped, or wrote all max_tokens it was asked
            # for; never one a budget cut, an abort or an error ended.
            if degraded_reason is None and finish_reason in REUSABLE_FINISH:
                shared = CachedAnswer("".join(parts), str(finish_reason), usage.completion_tokens)
        finally:
            if answers is not None and key is not None:
                answers.keep(key, shared)
        self.metrics.generated_tokens.observe(usage.completion_tokens)
        yield self._answer(req, "".join(parts), context, usage, timer, finish_reason, found, degraded_reason)

    def _answer(
        self,
        req: AnswerRequest,
        raw_text: str,
        context: Context,
        usage: Usage,
        timer: RequestTimer,
        finish_reason: str | None,
        found: SearchOutcome | None,
        degraded_reason: str | None = None,
        *,
        cached: bool = False,
    ) -> Answer:
        text = raw_text.strip()
        grounding = (
            judge(text, len(context.hits), self.settings.generator.abstain_phrase)
            if req.plan.with_passages
            else None
        )
        answer = Answer(
            req.request_id,
            text,
            context,
            usage,
            timer.finish(),
            finish_reason,
            degraded=degraded_reason is not None,
            degraded_reason=degraded_reason,
            retrieval=found,
            cached=cached,
            generated=raw_text,
            grounding=grounding,
        )
        log.info(
            "answered %s%s: %s ms, %d context + %d prompt tokens, %d generated (%s)%s",
            req.request_id,
            " from the answer cache" if cached else "",
            answer.timings_ms,
            context.tokens,
            usage.prompt_tokens,
            usage.completion_tokens,
            finish_reason,
            f", degraded: {degraded_reason} over budget" if degraded_reason else "",
        )
        return answer

    async def ask(self, req: AnswerRequest) -> Answer:
        async for item in self.ask_stream(req):
            if isinstance(item, Answer):
                return item
        raise RuntimeError("pipeline ended without an answer")

    async def close(self) -> None:
        await self.batcher.close()
