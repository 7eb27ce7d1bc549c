"""The one writer of a replicated index: owns the store, takes every write, feeds every replica.

Ray-free on purpose: the Serve deployment (``serve_app.py``) is a thin shell around it, and tests use
it in process. It holds the index folder's ``LiveIndex`` (its store is the truth; its snapshots are
what new replicas start from) and an ``IngestWorker`` for text writes, and it accepts precomputed
vectors (Ray Data ingestion, ``ray_ingest.py``) after checking they come from the index's encoder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.errors import IndexUnavailable, InvalidRequest
from rag_service.index.bundle import make_bundle
from rag_service.index.live import LiveIndex
from rag_service.index.snapshot import IndexSpec
from rag_service.ingestion.ingestor import open_or_create, validate_batch
from rag_service.ingestion.worker import IngestWorker
from rag_service.storage.replication import ChangeBatch, export_changes
from rag_service.storage.store import DocumentWrite, WriteResult, content_hash

log = logging.getLogger(__name__)


@dataclass(slots=True)
class EmbeddedDocument:
    """A document already chunked and embedded elsewhere (a Ray Data actor): what ``write_embedded``
    stores, after checking the vectors' spec against the index's."""

    doc: Document
    chunks: list[str]
    embeddings: np.ndarray


class IndexWriter:
    def __init__(self, live: LiveIndex, settings: Settings) -> None:
        self.live = live
        self.settings = settings
        self.worker = IngestWorker(live, settings)

    @classmethod
    def open(cls, settings: Settings, spec: IndexSpec) -> IndexWriter:
        """The index folder's writer; an empty store is created there when the folder holds none."""
        from rag_service.embedding.encoder import Encoder

        if not settings.index_path.exists() or not any(settings.index_path.iterdir()):
            open_or_create(settings.index_path, Encoder(settings.encoder), settings).close()
        live = LiveIndex.open(settings.index_path, spec, settings.index, background_nice=settings.ingest.nice)
        live.start_refresh(settings.index.refresh_s)  # rows committed by `rag-service ingest` beside it
        return cls(live, settings)

    # --- writes (one at a time, on the ingestion thread) --------------------------------------

    async def upsert(self, docs: Sequence[Document]) -> WriteResult:
        return await self.worker.upsert(docs)

    async def delete(self, doc_id: str) -> WriteResult:
        return await self.worker.delete(doc_id)

    async def write_embedded(
        self, spec_meta: dict[str, Any], items: Sequence[EmbeddedDocument]
    ) -> WriteResult:
        """Store documents embedded elsewhere, as one batch, if their encoder spec is this index's."""
        spec = IndexSpec.from_meta(spec_meta)
        if not spec.compatible(self.live.spec):
            raise IndexUnavailable(
                f"vectors from encoder {spec.encoder!r} (dimension {spec.dimension}, quantization "
                f"{spec.quantization}) cannot go into an index built with {self.live.spec.encoder!r} "
                f"(dimension {self.live.spec.dimension}, quantization {self.live.spec.quantization})",
                code="index_encoder_mismatch",
            )
        validate_batch([item.doc for item in items])
        writes = []
        for i, item in enumerate(items):
            vectors = np.asarray(item.embeddings, dtype=np.float32)
            if vectors.shape != (len(item.chunks), spec.dimension) or not item.chunks:
                raise InvalidRequest(
                    f"documents[{i}] (id {item.doc.id!r}): {len(item.chunks)} chunks but embeddings of "
                    f"shape {vectors.shape}",
                    param=f"documents.{i}.embeddings",
                )
            writes.append(DocumentWrite(item.doc, item.chunks, vectors, content_hash(item.doc)))

        def write() -> WriteResult:
            result = self.live.store.write(upserts=writes)
            self.live.catch_up()
            return result

        return await self.worker.run(write)

    # --- what replicas read --------------------------------------------------------------------

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """Stored content hashes by id: Ray Data ingestion skips unchanged documents before embedding."""
        return self.live.store.content_hashes(ids)

    def last_seq(self) -> int:
        return self.live.store.last_seq()

    def changes_since(self, seq: int) -> ChangeBatch:
        return export_changes(self.live.store, seq)

    async def bundle(self) -> bytes:
        data, seq = await asyncio.to_thread(make_bundle, self.live)
        log.info("snapshot bundle for a replica: %.1f MB at seq %d", len(data) / 1e6, seq)
        return data

    def spec(self) -> dict[str, Any]:
        return self.live.spec.as_meta()

    def stats(self) -> dict[str, Any]:
        return self.live.stats()

    def close(self) -> None:
        self.worker.close()
        self.live.close()
