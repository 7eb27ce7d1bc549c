"""Whole index folders: ``build-index`` and ``reindex`` build a fresh one beside the old and swap it in."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.errors import InvalidRequest
from rag_service.index.snapshot import open_store
from rag_service.ingestion.ingestor import (
    Ingestor,
    chunker_for,
    ingest_documents,
    open_or_create,
    validate_batch,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildReport:
    documents: int
    passages: int
    seconds: float


def build_index(
    documents: Iterable[Document],
    encoder: Encoder,
    settings: Settings,
    folder: Path,
    *,
    progress: bool = True,
) -> BuildReport:
    """Build a fresh index folder of ``documents`` beside ``folder`` and swap it in with renames, so
    a reader never sees half an index. Used by ``build-index`` and ``reindex``."""
    started = time.perf_counter()
    docs = list(documents)
    validate_batch(docs, where="corpus")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    live = open_or_create(staging, encoder, settings)
    try:
        ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
        report = ingest_documents(ingestor, docs, settings.ingest.batch_docs, progress=progress)
    finally:
        live.close()  # writes the final snapshot, folds the WAL into the database file
    if report.chunks == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidRequest("no text to index: every document was empty")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists() or folder.is_symlink():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    result = BuildReport(report.upserted, report.chunks, time.perf_counter() - started)
    log.info(
        "built index at %s: %d documents, %d passages in %.1f s",
        folder,
        *(result.documents, result.passages, result.seconds),
    )
    return result


def stored_documents(folder: Path) -> list[Document]:
    """Every live document of a folder's store, whatever encoder embedded it (for ``reindex``)."""
    store = open_store(folder, expected=None)
    try:
        return list(store.documents())
    finally:
        store.close()
