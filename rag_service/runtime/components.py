"""Where the service's generator and index come from: in process by default (one machine), or, in a
Ray Serve replica, the generator deployment and a follower of the one writer (``rag_service/scaling/``).

Everything else (pipeline, API, warm-up, readiness, admission) is the same code in both: a replica is
the single-process service with two of its parts reached over Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rag_service.config import GeneratorSettings, Settings
from rag_service.domain import Document
from rag_service.generation.generator import Generator, VllmGenerator
from rag_service.index.live import LiveIndex
from rag_service.index.snapshot import IndexSpec
from rag_service.ingestion.worker import IngestWorker
from rag_service.storage.store import WriteResult


class IndexAccess(Protocol):
    """The index a service searches, and where its writes go."""

    live: LiveIndex

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        """Committed and searchable here when it returns."""

    async def delete(self, doc_id: str) -> WriteResult: ...

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        """True once this index has applied every write up to ``seq`` (read-your-writes)."""

    def describe(self) -> dict[str, object]:
        """What ``/v1/index/stats`` adds: the role of this process and how it keeps up."""

    def close(self) -> None: ...


class LocalIndex:
    """The index folder opened in this process: snapshot + replay, writes on the ingestion thread."""

    def __init__(self, settings: Settings, spec: IndexSpec) -> None:
        s = settings
        # Snapshot + replay of newer rows; its rebuild thread runs at the ingestion niceness.
        self.live = LiveIndex.open(s.index_path, spec, s.index, background_nice=s.ingest.nice)
        self.live.start_refresh(s.index.refresh_s)  # rows that `rag-service ingest` commits beside us
        self.worker = IngestWorker(self.live, s)  # its encoder loads on the first write

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        return await self.worker.upsert(docs)

    async def delete(self, doc_id: str) -> WriteResult:
        return await self.worker.delete(doc_id)

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        if self.live.applied_seq < seq:  # committed by another process, not picked up yet
            await asyncio.to_thread(self.live.catch_up)
        return self.live.applied_seq >= seq

    def describe(self) -> dict[str, object]:
        return {"role": "single"}

    def close(self) -> None:
        """Waits for a write in progress (it commits or not, whole), then a last snapshot."""
        self.worker.close()
        self.live.close()  # a last snapshot: the next start replays less


@dataclass(frozen=True, slots=True)
class Components:
    start_generator: Callable[[GeneratorSettings], Generator] = VllmGenerator.start
    open_index: Callable[[Settings, IndexSpec], IndexAccess] = LocalIndex
