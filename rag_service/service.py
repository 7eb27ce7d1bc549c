"""The running service: loads the components, warms every stage up, and knows whether it is ready.

Loading happens in the background after the HTTP server starts, so ``/healthz`` answers at once and
``/readyz`` turns 200 only after a synthetic question has gone through embed, retrieve and generate
(prefill and decode) — the cold start is paid before any user request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

from rag_service.config import Settings
from rag_service.encoder import Encoder
from rag_service.errors import NotReady
from rag_service.generator import Generator, VllmGenerator
from rag_service.index import IndexSpec, LiveIndex
from rag_service.pipeline import Pipeline
from rag_service.prompt import PromptBuilder
from rag_service.retriever import Retriever

log = logging.getLogger(__name__)

WARM_UP_QUESTION = "What does the pass statement do?"


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
        try:
            # The engine start is the long pole (tens of seconds): load everything else beside it.
            generator_task = asyncio.create_task(
                asyncio.to_thread(VllmGenerator.start, self.settings.generator)
            )
            try:
                retriever, encoder = await asyncio.to_thread(self._load_retrieval)
            finally:
                self._generator = await generator_task
            self._pipeline = Pipeline(encoder, retriever, self._generator, self.settings)
            self.reason = "warming up"
            await self._warm_up(self._pipeline)
        except Exception as exc:
            self.state = State.FAILED
            self.reason = f"{type(exc).__name__}: {exc}"
            log.exception("service failed to start")
            return
        self.cold_start_s = round(time.perf_counter() - started, 2)
        self.state, self.reason = State.READY, "ready"
        log.info("service ready: cold start took %.1f s", self.cold_start_s)

    def _load_retrieval(self) -> tuple[Retriever, Encoder]:
        s = self.settings
        encoder = Encoder(s.encoder)
        prompts = PromptBuilder.from_model(s.generator.model, s.generator.system_prompt)
        spec = IndexSpec(encoder=encoder.model_id, dimension=encoder.dimension)
        self.live = LiveIndex.open(s.index_path, spec, s.index)  # snapshot + replay of newer rows
        self.live.start_refresh(s.index.refresh_s)
        return Retriever(self.live, prompts), encoder

    async def _warm_up(self, pipeline: Pipeline) -> None:
        started = time.perf_counter()
        request = pipeline.new_request(
            WARM_UP_QUESTION,
            top_k=self.settings.retriever.top_k,
            max_tokens=4,
            temperature=0.0,
            stop=self.settings.generator.stop,
        )
        answer = await pipeline.ask(request)
        log.info(
            "warm-up passed every stage in %.2f s (%s)", time.perf_counter() - started, answer.timings_ms
        )

    def shutdown(self) -> None:
        if self._generator is not None:
            self._generator.shutdown()
        if self.live is not None:
            self.live.close()  # a last snapshot: the next start replays less
