"""vLLM engine adapter: start the async engine in-process, stream answers, abort, shut down.

vLLM's ``AsyncLLM`` batches concurrent requests continuously; each ``stream`` call is one request.
A request that is abandoned (client gone, caller cancelled) is aborted in the engine so no tokens
keep being computed for nobody.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import anyio

from rag_service.config import GeneratorSettings
from rag_service.domain import GenerationChunk, Sampling
from rag_service.errors import GenerationFailed

log = logging.getLogger(__name__)


class Generator(Protocol):
    def stream(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        request_id: str,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def unfinished_requests(self) -> int:
        """Requests still running (metrics)."""

    async def reset_prefix_cache(self) -> None:
        """Forget cached prompt prefixes, so the next prompt pays its full prefill (readiness checks)."""

    def shutdown(self) -> None: ...


def configure_vllm_environment(settings: GeneratorSettings) -> None:
    """vLLM's CPU backend reads these at import/start time, so set them before the engine exists."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
    bind = settings.cpu_threads_bind
    if bind == "all":
        bind = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind


class VllmGenerator:
    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.aborted = 0  # requests stopped before their end (client gone, cancelled): tests, metrics

    @classmethod
    def start(cls, settings: GeneratorSettings) -> VllmGenerator:
        """Blocking (tens of seconds on CPU): run it in a worker thread from async code."""
        configure_vllm_environment(settings)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
        )
        # No local names the engine: a module imported above keeps an exception whose traceback
        # reaches this frame, and a local here would keep the engine alive after ``shutdown``.
        generator = cls(AsyncLLM.from_engine_args(args))
        log.info("vLLM engine started for %s (%s)", settings.model, settings.dtype)
        return generator

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
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sampling = sampling or Sampling()
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            top_p=sampling.top_p,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            min_tokens=sampling.min_tokens,
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
        finished = False
        outputs = self._engine.generate(
            TokensPrompt(prompt_token_ids=prompt_ids), params, request_id=request_id
        )
        try:
            while True:
                try:
                    out = await anext(outputs)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # The engine's own failure (dead engine core, rejected request), not a client's.
                    raise GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}") from exc
                piece = out.outputs[0]
                completion_tokens += len(piece.token_ids)
                finished = out.finished
                yield GenerationChunk(
                    text=piece.text,
                    finish_reason=piece.finish_reason if finished else None,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=completion_tokens,
                )
        finally:
            # Shielded: under a cancelled anyio scope (client gone) every unshielded await is cancelled.
            with anyio.CancelScope(shield=True):
                await outputs.aclose()  # vLLM's own clean-up runs now, not when garbage-collected
                if not finished:
                    # Closed early (client disconnect, cancellation): stop the work in the engine.
                    await self._engine.abort(request_id)
                    self.aborted += 1
                    log.info("aborted generation %s after %d tokens", request_id, completion_tokens)

    async def reset_prefix_cache(self) -> None:
        if self._engine is not None and not await self._engine.reset_prefix_cache():
            log.warning("vLLM did not reset its prefix cache (requests still running?)")

    @property
    def unfinished_requests(self) -> int:
        """Requests the engine still holds: drops as soon as an abort took effect (metrics, tests)."""
        return 0 if self._engine is None else int(self._engine.get_num_unfinished_requests())

    @property
    def healthy(self) -> bool:
        """False once the engine core process has died: the service can no longer answer."""
        return self._engine is not None and not self._engine.errored

    def shutdown(self) -> None:
        # Dropped here so that the collection after this (gc_pauses.thaw) frees the engine while the
        # interpreter is whole: freed at exit instead, its __del__ fails on half-torn-down modules.
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
