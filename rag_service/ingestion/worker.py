"""The server's writer thread for the documents API (owned, and stopped, by the runtime's ``Service``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.index.live import LiveIndex
from rag_service.ingestion.ingestor import Ingestor, chunker_for, delete_document
from rag_service.runtime.priority import lower_priority
from rag_service.storage.store import WriteResult

T = TypeVar("T")


class IngestWorker:
    """The server's writer: one thread at raised niceness runs every write, one batch at a time, with
    its own encoder (loaded on the first upsert), so the query path shares no tokenizer state with it."""

    def __init__(self, live: LiveIndex, settings: Settings) -> None:
        self.live = live
        self.settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="ingest",
            initializer=lower_priority,
            initargs=(settings.ingest.nice,),
        )
        self._ingestor: Ingestor | None = None

    async def run(self, work: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._executor.submit(work))

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        return await self.run(lambda: self._get_ingestor().upsert(docs))

    async def delete(self, doc_id: str) -> WriteResult:
        return await self.run(lambda: delete_document(self.live, doc_id))

    def _get_ingestor(self) -> Ingestor:
        if self._ingestor is None:
            encoder = Encoder(self.settings.encoder)
            self._ingestor = Ingestor(self.live, encoder, chunker_for(encoder, self.settings))
        return self._ingestor

    def close(self) -> None:
        """Waits for a write in progress (it commits or not, whole), drops queued ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
