"""Batch ingestion: documents -> chunks -> vectors -> one store transaction -> the live index.

The CLI (``ingest``, ``build-index``, ``reindex``) and the HTTP API (``POST /v1/documents``) share
``Ingestor``. A batch is validated whole before anything is written (a bad document refuses the
batch, nothing partial is stored); unchanged documents (same id, same content hash) are skipped
before encoding, so re-running an interrupted ingestion resumes where it stopped.

CPU share: ingestion runs at a raised niceness (``RAG_INGEST__NICE``, default 10): the ``ingest``
process as a whole, or the server's single ingestion thread (Linux nice values are per thread, and
the OpenMP threads torch starts from it inherit it). The kernel then gives queries the cores whenever
both want them, and ingestion still uses every idle cycle.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.errors import InvalidRequest
from rag_service.index.live import LiveIndex
from rag_service.ingestion.chunking import Chunker
from rag_service.storage.store import DocumentStore, DocumentWrite, WriteResult, content_hash

log = logging.getLogger(__name__)
T = TypeVar("T")


def embedding_text(title: str, text: str) -> str:
    """What the encoder sees: the title gives a chunk from the middle of a text its topic."""
    if title and not text.startswith(title):
        return f"{title}\n{text}"
    return text


def validate_batch(docs: Sequence[Document], *, where: str = "documents") -> None:
    """Refuse the whole batch on the first bad document: no id, no text, an id twice."""
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        if not doc.id.strip():
            raise InvalidRequest(f"{where}[{i}]: the document id is empty", param=f"{where}.{i}.id")
        if not doc.text.strip():
            raise InvalidRequest(
                f"{where}[{i}] (id {doc.id!r}): the text is empty", param=f"{where}.{i}.text"
            )
        if doc.id in seen:
            raise InvalidRequest(
                f"{where}[{i}]: id {doc.id!r} is already used by {where}[{seen[doc.id]}] in this batch",
                param=f"{where}.{i}.id",
            )
        seen[doc.id] = i


class Ingestor:
    """Writes batches of documents into a store and applies them to its live index."""

    def __init__(self, live: LiveIndex, encoder: Encoder, chunker: Chunker) -> None:
        self.live = live
        self.store = live.store
        self.encoder = encoder
        self.chunker = chunker

    def upsert(self, docs: Sequence[Document]) -> WriteResult:
        """Idempotent: a document whose content is already stored is left alone; new content replaces
        the old chunks. Returns once the batch is committed (durable) and searchable."""
        validate_batch(docs)
        known = self.store.content_hashes([d.id for d in docs])
        todo = [(doc, digest) for doc in docs if known.get(doc.id) != (digest := content_hash(doc))]
        chunked = [(doc, digest, self.chunker.split(doc.text)) for doc, digest in todo]
        # One encode call for the whole batch: the encoder batches across documents.
        vectors = self.encoder.encode_passages(
            [embedding_text(doc.title, c) for doc, _, chunks in chunked for c in chunks]
        )
        writes: list[DocumentWrite] = []
        offset = 0
        for doc, digest, chunks in chunked:
            writes.append(DocumentWrite(doc, chunks, vectors[offset : offset + len(chunks)], digest))
            offset += len(chunks)
        result = self.store.write(upserts=writes)
        result.unchanged += len(docs) - len(writes)
        self.live.catch_up()
        return result

    def delete(self, doc_id: str) -> WriteResult:
        return delete_document(self.live, doc_id)


def delete_document(live: LiveIndex, doc_id: str) -> WriteResult:
    """Tombstone a document's chunks (committed, then filtered from the next search)."""
    result = live.store.write(deletes=[doc_id])
    live.catch_up()
    return result


def chunker_for(encoder: Encoder, settings: Settings) -> Chunker:
    return Chunker(encoder.tokenizer, settings.chunking.chunk_tokens, settings.chunking.overlap_tokens)


def open_or_create(folder: Path, encoder: Encoder, settings: Settings) -> LiveIndex:
    """The live index of ``folder``, creating an empty store there if the folder holds nothing."""
    spec = encoder.index_spec()
    if not DocumentStore.exists(folder) and (not folder.exists() or not any(folder.iterdir())):
        DocumentStore.create(folder, spec.as_meta()).close()
    return LiveIndex.open(folder, spec, settings.index, background_nice=settings.ingest.nice)


def batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(slots=True)
class IngestReport:
    documents: int = 0
    upserted: int = 0
    unchanged: int = 0
    chunks: int = 0
    seconds: float = 0.0
    seq: int = 0

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def ingest_documents(
    ingestor: Ingestor,
    docs: Sequence[Document],
    batch_docs: int,
    *,
    progress: bool = True,
    on_commit: Callable[[list[Document], WriteResult], None] | None = None,
) -> IngestReport:
    """Upsert ``docs`` in committed batches with a progress bar (docs/s, ETA)."""
    report = IngestReport()
    started = time.perf_counter()
    with tqdm(total=len(docs), desc="ingesting", unit="doc", disable=not progress) as bar:
        for batch in batches(docs, batch_docs):
            result = ingestor.upsert(batch)
            report.documents += len(batch)
            report.upserted += result.upserted
            report.unchanged += result.unchanged
            report.chunks += result.chunks
            report.seq = result.seq
            if on_commit is not None:
                on_commit(batch, result)
            bar.update(len(batch))
            bar.set_postfix(new=report.upserted, unchanged=report.unchanged, chunks=report.chunks)
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def ack_log(path: str | None) -> Iterator[Callable[[list[Document], WriteResult], None]]:
    """``--ack-log``: an ``on_commit`` that appends each committed document id to ``path`` (nothing
    when None), called only after the commit returned, so every id in the file is durable."""
    if path is None:
        yield lambda _docs, _result: None
        return
    with open(path, "a", encoding="utf-8") as out:

        def acknowledge(docs: list[Document], _result: WriteResult) -> None:
            out.write("".join(f"{d.id}\n" for d in docs))
            out.flush()

        yield acknowledge
