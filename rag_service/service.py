"""The running service: loads the components, warms every stage up, and knows whether it is ready.

Loading happens in the background after the HTTP server starts, so ``/healthz`` answers at once and
``/readyz`` turns 200 only after synthetic questions have gone through embed, retrieve and generate
(prefill and decode) — the cold start is paid before any user request. It also owns what every
request shares: the metrics and the admission controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

from rag_service.admission import AdmissionController
from rag_service.config import BudgetSettings, Settings
from rag_service.encoder import Encoder
from rag_service.errors import DeadlineExceeded, NotReady
from rag_service.gc_pauses import GcPauseWatch, freeze, thaw
from rag_service.generator import Generator, VllmGenerator
from rag_service.index import IndexSpec, LiveIndex
from rag_service.metrics import Metrics
from rag_service.pipeline import AskRequest, Deadline, Pipeline
from rag_service.prompt import PromptBuilder
from rag_service.retriever import Retriever

log = logging.getLogger(__name__)

WARM_UP_QUESTION = "What does the pass statement do?"
# The second warm-up round: concurrent questions, so batched encoder shapes and vLLM's batched decode
# are exercised too, under the real budgets.
WARM_UP_ROUND = (
    "What does the pass statement do?",
    "How does a for loop work?",
    "What is a lambda expression?",
    "What does the assert statement do?",
)
# The cold first pass may be slow (lazy initialisation everywhere): it runs without budgets.
NO_BUDGETS = BudgetSettings(
    embed_ms=600_000, retrieve_ms=600_000, first_token_ms=600_000, generate_ms=600_000, total_ms=600_000
)


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State.STARTING
        self.reason = "loading models and index"
        self.cold_start_s: float | None = None
        self._pipeline: Pipeline | None = None
        self._generator: Generator | None = None
        self.metrics = Metrics()
        adm = settings.admission
        self.admission = AdmissionController(adm.max_in_flight, adm.max_queue, adm.max_queue_share)
        self.metrics.watch(self.metrics.in_flight, lambda: self.admission.in_flight)
        self.metrics.watch(self.metrics.queued, lambda: self.admission.queued)
        self.gc_watch = GcPauseWatch(self.metrics.gc_pause)  # from start() until stop()
        self.live: LiveIndex | None = None  # the index the documents API writes to

    def check(self) -> None:
        """Notices a generation engine that died after start: the service is then failed, not ready."""
        if self.state is State.READY and self._generator is not None and not self._generator.healthy:
            self.state, self.reason = State.FAILED, "the generation engine stopped; restart the service"
            log.error(self.reason)

    @property
    def pipeline(self) -> Pipeline:
        self.check()
        if self._pipeline is None or self.state is not State.READY:
            raise NotReady(f"service is {self.state.value}: {self.reason}")
        return self._pipeline

    async def start(self) -> None:
        started = time.perf_counter()
        self.gc_watch.start()
        try:
            # The engine start is the long pole (tens of seconds): load everything else beside it.
            generator_task = asyncio.create_task(
                asyncio.to_thread(VllmGenerator.start, self.settings.generator)
            )
            try:
                retriever, encoder = await asyncio.to_thread(self._load_retrieval)
            finally:
                generator = await generator_task
                self._generator = generator
            self.metrics.watch(self.metrics.engine_unfinished, lambda: generator.unfinished_requests)
            live = retriever.index  # the documents API adds and deletes: read the size at scrape time
            self.metrics.watch(self.metrics.index_passages, lambda: len(live))
            self._pipeline = Pipeline(encoder, retriever, generator, self.settings, self.metrics)
            self.reason = "warming up"
            await self._warm_up(self._pipeline)
        except Exception as exc:
            self.state = State.FAILED
            self.reason = f"{type(exc).__name__}: {exc}"
            log.exception("service failed to start")
            return
        # Models, modules and caches are loaded: keep them out of every later collection (gc_pauses.py).
        self.metrics.gc_frozen.set(freeze())
        self.cold_start_s = round(time.perf_counter() - started, 2)
        self.metrics.cold_start.set(self.cold_start_s)
        self.state, self.reason = State.READY, "ready"
        log.info("service ready: cold start took %.1f s", self.cold_start_s)

    def _load_retrieval(self) -> tuple[Retriever, Encoder]:
        s = self.settings
        encoder_settings = s.encoder
        if not encoder_settings.num_threads:  # see batching.encoder_threads: one thread beside vLLM
            encoder_settings = encoder_settings.model_copy(update={"num_threads": s.batching.encoder_threads})
        encoder = Encoder(encoder_settings)
        prompts = PromptBuilder.from_model(s.generator.model, s.generator.system_prompt)
        spec = IndexSpec(encoder=encoder.model_id, dimension=encoder.dimension)
        self.live = LiveIndex.open(s.index_path, spec, s.index)  # snapshot + replay of newer rows
        self.live.start_refresh(s.index.refresh_s)
        return Retriever(self.live, prompts, s.retriever), encoder

    async def _warm_up(self, pipeline: Pipeline) -> None:
        started = time.perf_counter()
        cold = await pipeline.ask(self._warm_up_request(pipeline, WARM_UP_QUESTION, NO_BUDGETS))
        log.info("warm-up: cold pass through every stage in %.2f s", time.perf_counter() - started)
        # Concurrent questions: batched encoder shapes and vLLM's batched decode, still unbudgeted.
        round_started = time.perf_counter()
        answers = await asyncio.gather(
            *(pipeline.ask(self._warm_up_request(pipeline, q, NO_BUDGETS)) for q in WARM_UP_ROUND)
        )
        # Seeds admission's service-time estimate; real requests replace it within a few completions.
        self.admission.observe(time.perf_counter() - round_started)
        # One last question under the real budgets: a warning (not a failure) if they look too tight.
        try:
            check = await pipeline.ask(
                self._warm_up_request(pipeline, WARM_UP_QUESTION, self.settings.budget)
            )
            if check.degraded:
                log.warning(
                    "warm-up answer degraded (%s over budget): budgets may be too tight here",
                    check.degraded_reason,
                )
        except DeadlineExceeded as exc:
            log.warning("warm-up question over budget (%s): budgets may be too tight here", exc.message)
        log.info(
            "warm-up passed every stage in %.2f s (cold %s ms; concurrent %s)",
            time.perf_counter() - started,
            cold.timings_ms,
            [a.timings_ms for a in answers],
        )

    def _warm_up_request(self, pipeline: Pipeline, question: str, budgets: BudgetSettings) -> AskRequest:
        return pipeline.new_request(
            question,
            top_k=self.settings.retriever.top_k,
            max_tokens=4,
            temperature=0.0,
            stop=self.settings.generator.stop,
            deadline=Deadline(budgets.total_ms),
            budgets=budgets,
        )

    async def stop(self) -> None:
        """Everything ``start`` began, ended: the batcher, the engine, a last index snapshot."""
        if self._pipeline is not None:
            await self._pipeline.close()
        self.gc_watch.stop()
        if self._generator is not None:
            self._generator.shutdown()
        if self.live is not None:
            self.live.close()  # a last snapshot: the next start replays less
        await asyncio.sleep(0)  # the engine's shutdown cancelled its output task: let that happen
        thaw()
