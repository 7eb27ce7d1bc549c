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
from typing import Any

from rag_service.caching.answers import AnswerCache
from rag_service.caching.reuse import AnswerReuse
from rag_service.config import BudgetSettings, Settings
from rag_service.embedding.encoder import BackendChoice, Encoder
from rag_service.errors import NotReady
from rag_service.generation.generator import Generator
from rag_service.pipeline.budgets import Deadline
from rag_service.pipeline.pipeline import AnswerRequest, Pipeline
from rag_service.prompting.prompt import PromptBuilder
from rag_service.retrieval.passages import PassageSearch
from rag_service.runtime import readiness
from rag_service.runtime.admission import AdmissionController
from rag_service.runtime.calibration import budget_sources
from rag_service.runtime.components import Components, IndexAccess
from rag_service.runtime.gc_pauses import GcPauseWatch, freeze, thaw
from rag_service.runtime.hardware import DtypeChoice, cpu_features, cuda_bf16, cuda_devices, generator_dtype
from rag_service.runtime.heavy_imports import import_heavy_libraries
from rag_service.runtime.metrics import Metrics

log = logging.getLogger(__name__)

WARM_UP_QUESTION = "What does the pass statement do?"
# The second warm-up round: concurrent questions, so batched encoder shapes and vLLM's batched decode
# are exercised too. The budget check that follows asks other questions (readiness.FRESH_QUESTIONS).
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
    OVER_BUDGET = "over_budget"  # loaded, but the budget check found the budgets cannot be met here


class Service:
    def __init__(self, settings: Settings, components: Components | None = None) -> None:
        self.settings = settings
        self.components = components or Components()  # in process; a Ray Serve replica passes its own
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
        self.index: IndexAccess | None = None  # what the documents API reads and writes through
        self.generator_dtype: DtypeChoice | None = None  # resolved at start (hardware.py)
        self.generator_settings = settings.generator
        self.encoder_dtype: DtypeChoice | None = None
        self.encoder_backend: BackendChoice | None = None  # torch, onnx or onnx-int8, and why
        self.questions = readiness.QuestionSource()  # fresh questions for the budget check
        self.readiness: readiness.Round | None = None
        self.machine: dict[str, Any] = {}  # resolved at start, shown by /readyz (resolve_hardware)
        # Where each budget in force came from, read once: the settings were read from the same files.
        self.budget_sources = budget_sources()

    def check(self) -> None:
        """Notices a generation engine that died after start: the service is then failed, not ready."""
        if self.state is State.READY and self._generator is not None and not self._generator.healthy:
            self.state, self.reason = State.FAILED, "the generation engine stopped; restart the service"
            log.error(self.reason)

    @property
    def pipeline(self) -> Pipeline:
        self.check()
        if self._pipeline is None or self.state is not State.READY:
            code = "over_budget" if self.state is State.OVER_BUDGET else None
            raise NotReady(f"service is {self.state.value}: {self.reason}", code=code)
        return self._pipeline

    async def start(self, *, check_budgets: bool = True) -> None:
        """Load, warm up and (``check_budgets``) check the budgets; ``rag-service calibrate`` skips the
        check, since it is about to measure the budgets themselves."""
        started = time.perf_counter()
        self.gc_watch.start()
        try:
            # One thread first: the heavy imports, then everything that touches transformers (encoder,
            # prompt tokenizer), never from two threads at once (heavy_imports.py). Then the engine
            # start, the long pole (tens of seconds), beside the index load, which needs no transformers.
            onnx = self.settings.encoder.backend in ("onnx", "onnx-int8")
            await asyncio.to_thread(import_heavy_libraries, onnx=onnx)
            self.resolve_hardware()
            encoder, prompts = await asyncio.to_thread(self._load_encoder)
            generator_task = asyncio.create_task(
                asyncio.to_thread(self.components.start_generator, self.generator_settings)
            )
            try:
                retriever = await asyncio.to_thread(self._load_index, encoder, prompts)
            finally:
                generator = await generator_task
                self._generator = generator
            self.metrics.watch(self.metrics.engine_unfinished, lambda: generator.unfinished_requests)
            live = retriever.index  # the documents API adds and deletes: read the size at scrape time
            self.metrics.watch(self.metrics.index_passages, lambda: len(live))
            self._pipeline = Pipeline(
                encoder, retriever, generator, self.settings, self.metrics, answers=self._answer_cache()
            )
            self.reason = "warming up"
            await self._warm_up(self._pipeline)
            if check_budgets:
                self.reason = "checking the budgets with fresh questions"
                await self._check_budgets(self._pipeline)
        except Exception as exc:
            self.state = State.FAILED
            self.reason = f"{type(exc).__name__}: {exc}"
            log.exception("service failed to start")
            return
        # Models, modules and caches are loaded: keep them out of every later collection (gc_pauses.py).
        self.metrics.gc_frozen.set(freeze())
        self.cold_start_s = round(time.perf_counter() - started, 2)
        self.metrics.cold_start.set(self.cold_start_s)
        if (
            self.readiness is not None
            and not self.readiness.ok
            and not self.settings.budget.accept_over_budget
        ):
            self.state, self.reason = State.OVER_BUDGET, self._over_budget_reason(self.readiness)
            log.error("service NOT ready: %s", self.reason)
            return
        self.state, self.reason = State.READY, "ready"
        if self.readiness is not None and not self.readiness.ok:
            self.reason = "ready, over budget (accepted by RAG_BUDGET__ACCEPT_OVER_BUDGET)"
            log.warning("service ready although over budget: %s", self._over_budget_reason(self.readiness))
        log.info("service ready: cold start took %.1f s", self.cold_start_s)

    def _answer_cache(self) -> AnswerReuse | None:
        """The prompt-exact answer cache (RAG_CACHE__*), keyed by the generator and the dtype it runs in."""
        cache = self.settings.cache
        if not cache.enabled:
            return None
        model = f"{self.generator_settings.model}@{self.generator_settings.dtype}"
        lru = AnswerCache(max_entries=cache.max_entries, max_bytes=cache.max_bytes, model=model)
        return AnswerReuse(lru, self.metrics)

    def resolve_hardware(self) -> None:
        """The dtypes this machine runs fast, logged with the reason (hardware.py)."""
        cpu = cpu_features()
        gpus = cuda_devices()
        gen = self.settings.generator
        self.generator_dtype = generator_dtype(gen.dtype, gpus=gpus, gpu_bf16=cuda_bf16(), cpu=cpu)
        self.machine = {
            "cpu": cpu.model,
            "isa": cpu.isa,
            "torch_capability": cpu.torch_capability,
            "native_bf16": cpu.native_bf16,
            "cores": cpu.cores,
            "memory_gib": cpu.memory_gib,
            "gpus": gpus,
        }
        self.generator_settings = gen.model_copy(update={"dtype": self.generator_dtype.dtype})
        log.info(
            "machine: %s (%s, torch %s), %d cores, %.1f GiB; generator %s: %s; generator dtype %s: %s",
            cpu.model,
            cpu.isa,
            cpu.torch_capability,
            cpu.cores,
            cpu.memory_gib,
            gen.model,
            gen.model_choice.reason,
            self.generator_dtype.dtype,
            self.generator_dtype.reason,
        )

    def _load_encoder(self) -> tuple[Encoder, PromptBuilder]:
        s = self.settings
        encoder_settings = s.encoder
        if not encoder_settings.num_threads:  # see batching.encoder_threads: one thread beside vLLM
            encoder_settings = encoder_settings.model_copy(update={"num_threads": s.batching.encoder_threads})
        encoder = Encoder(encoder_settings)
        self.encoder_dtype = encoder.dtype_choice
        self.encoder_backend = encoder.backend_choice
        return encoder, PromptBuilder.from_model(s.generator.model, s.generator.rag_instruction)

    def _load_index(self, encoder: Encoder, prompts: PromptBuilder) -> PassageSearch:
        s = self.settings
        self.index = self.components.open_index(s, encoder.index_spec())
        return PassageSearch(self.index.live, prompts, s.retriever)

    async def _warm_up(self, pipeline: Pipeline) -> None:
        started = time.perf_counter()
        cold = await pipeline.ask(self._warm_up_request(pipeline, WARM_UP_QUESTION, NO_BUDGETS))
        log.info("warm-up: cold pass through every stage in %.2f s", time.perf_counter() - started)
        # Concurrent questions: batched encoder shapes and vLLM's batched decode, still unbudgeted; no
        # more at once than admission will ever let run.
        round_started = time.perf_counter()
        at_once = WARM_UP_ROUND[: self.settings.admission.max_in_flight]
        answers = await asyncio.gather(
            *(pipeline.ask(self._warm_up_request(pipeline, q, NO_BUDGETS)) for q in at_once)
        )
        # Seeds admission's service-time estimate; real requests replace it within a few completions.
        self.admission.observe(time.perf_counter() - round_started)
        log.info(
            "warm-up passed every stage in %.2f s (cold %s ms; concurrent %s)",
            time.perf_counter() - started,
            cold.timings_ms,
            [a.timings_ms for a in answers],
        )

    async def _check_budgets(self, pipeline: Pipeline) -> None:
        """Fresh questions, as many at once as admission lets run, full-length answers, the real budgets:
        readiness means "answers within budget here" (readiness.py)."""
        budgets = self.settings.budget
        concurrency = self.settings.admission.max_in_flight
        self.readiness = await readiness.check(
            pipeline, self.questions, budgets, concurrency, self.settings.generator.max_tokens
        )
        measured = self.readiness.percentiles()
        log.info(
            "budget check (%d fresh questions at once, %d tokens each): %s",
            concurrency,
            self.settings.generator.max_tokens,
            ", ".join(
                f"{stage} max {measured[stage]['max']:.0f} / {limit:.0f} ms"
                for stage, limit in budgets.as_dict().items()
                if stage in measured
            ),
        )

    @staticmethod
    def _over_budget_reason(result: readiness.Round) -> str:
        return (
            "the budgets cannot be met on this machine: "
            + "; ".join(result.misses + result.errors)
            + ". Run `rag-service calibrate` to size them here (`make run` does), or set "
            "RAG_BUDGET__ACCEPT_OVER_BUDGET=true to serve anyway"
        )

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` and ``rag-service doctor`` show beside the state: the machine, the dtypes
        chosen and why, the budgets and where each came from, what the budget check measured."""
        body: dict[str, Any] = {}
        if self.generator_dtype is not None:
            body["machine"] = self.machine
            body["generator"] = self.settings.generator.model_choice.describe()
            body["dtypes"] = {"generator": self.generator_dtype.describe()}
            if self.encoder_dtype is not None:
                body["dtypes"]["encoder"] = self.encoder_dtype.describe()
            if self.encoder_backend is not None:
                body["encoder_backend"] = self.encoder_backend.describe()
        body["budgets_ms"] = self.settings.budget.as_dict()
        body["budget_sources"] = self.budget_sources
        if self.readiness is not None:
            body["budget_check"] = self.readiness.describe()
        return body

    def _warm_up_request(self, pipeline: Pipeline, question: str, budgets: BudgetSettings) -> AnswerRequest:
        req = pipeline.new_request(
            question,
            top_k=self.settings.retriever.top_k,
            max_tokens=4,
            temperature=0.0,
            stop=self.settings.generator.stop,
            deadline=Deadline(budgets.total_ms),
            budgets=budgets,
        )
        req.cache = False  # a warm-up must reach every stage, the engine included
        return req

    async def stop(self) -> None:
        """Everything ``start`` began, ended: the batcher, the ingestion worker (a write in progress
        finishes), the engine, a last index snapshot."""
        if self._pipeline is not None:
            await self._pipeline.close()
        self.gc_watch.stop()
        if self._generator is not None:
            self._generator.shutdown()
        if self.index is not None:
            await asyncio.to_thread(self.index.close)  # a write in progress finishes; a last snapshot
        await asyncio.sleep(0)  # the engine's shutdown cancelled its output task: let that happen
        thaw()
