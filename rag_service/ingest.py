"""Batch ingestion: documents -> chunks -> vectors -> a new index folder, swapped in atomically.

The CLI's ``build-index`` and the tests share this path.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rag_service.chunking import Chunker
from rag_service.config import IndexSettings
from rag_service.encoder import Encoder
from rag_service.index import HnswIndex, IndexSpec
from rag_service.store import PassageStore
from rag_service.types import Document, Passage

log = logging.getLogger(__name__)

ENCODE_BATCH = 256  # passages per encode+add step: one progress tick each, bounded memory


@dataclass(frozen=True, slots=True)
class BuildReport:
    documents: int
    passages: int
    seconds: float


def embedding_text(passage: Passage) -> str:
    """What the encoder sees: the title gives a chunk from the middle of a text its topic."""
    if passage.title and not passage.text.startswith(passage.title):
        return f"{passage.title}\n{passage.text}"
    return passage.text


def chunk_documents(
    documents: Iterable[Document], chunker: Chunker, *, progress: bool
) -> tuple[int, list[Passage]]:
    passages: list[Passage] = []
    count = 0
    for doc in tqdm(documents, desc="chunking", unit="doc", disable=not progress):
        count += 1
        for i, text in enumerate(chunker.split(doc.text)):
            passages.append(Passage(id=f"{doc.id}#{i}", doc_id=doc.id, title=doc.title, text=text))
    return count, passages


def build_index(
    documents: Iterable[Document],
    encoder: Encoder,
    chunker: Chunker,
    settings: IndexSettings,
    folder: Path,
    *,
    progress: bool = True,
) -> BuildReport:
    """Build an index of ``documents`` and put it at ``folder``, replacing what was there."""
    started = time.perf_counter()
    n_docs, passages = chunk_documents(documents, chunker, progress=progress)
    if not passages:
        raise ValueError("no text to index: every document was empty")
    index = HnswIndex(IndexSpec(encoder=encoder.model_id, dimension=encoder.dimension), settings)
    with tqdm(total=len(passages), desc="embedding+indexing", unit="passage", disable=not progress) as bar:
        for start in range(0, len(passages), ENCODE_BATCH):
            batch = passages[start : start + ENCODE_BATCH]
            index.add(encoder.encode_passages([embedding_text(p) for p in batch]))
            bar.update(len(batch))

    # Write a complete folder beside the target, then swap it in: readers never see half an index.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    PassageStore(passages).save(staging)
    index.save(staging)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    report = BuildReport(n_docs, len(passages), time.perf_counter() - started)
    log.info(
        "built index at %s: %d documents, %d passages in %.1f s",
        folder,
        *(report.documents, report.passages, report.seconds),
    )
    return report
