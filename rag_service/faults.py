"""Fault injection for tests only: added delays around the REAL stages, so budget tests are deterministic.

Nothing here replaces a component: the real encoder, index and vLLM still do their work; a delay is
only added before it (or before each generated token), which is how a test makes "this stage ran
late" happen on purpose. It is active only when ``RAG_FAULTS__ENABLED=true`` (the test server sets
it) and then read per request from the header ``X-Rag-Fault-Delay: embed=500,token=200``
(milliseconds) so one shared test server can serve both plain and delayed requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from rag_service.errors import InvalidRequest
from rag_service.generator import Generator
from rag_service.types import GenerationChunk, Sampling

HEADER = "x-rag-fault-delay"


@dataclass(frozen=True, slots=True)
class FaultDelays:
    """Seconds added before each point: ``admitted`` (after admission, before the pipeline),
    ``embed``, ``retrieve`` (inside those stages), ``first_token`` and ``token`` (before the first /
    each later generated token reaches the pipeline; vLLM keeps generating meanwhile)."""

    admitted: float = 0.0
    embed: float = 0.0
    retrieve: float = 0.0
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


class DelayedGenerator:
    """The real generator, with ``first_token`` / ``token`` delays before the chunks it yields."""

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
            sampling=sampling,
        )
        first = True
        try:
            async for chunk in chunks:
                await asyncio.sleep(self._delays.first_token if first else self._delays.token)
                first = False
                yield chunk
        finally:
            await chunks.aclose()  # closing the real stream aborts the request in vLLM

    @property
    def healthy(self) -> bool:
        return self._real.healthy

    def shutdown(self) -> None:
        self._real.shutdown()
