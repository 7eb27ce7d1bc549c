"""What an index holds, read for consistency checks (the service itself never needs these)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np

from rag_service.domain import Hit
from rag_service.index.live import LiveIndex
from rag_service.prompting.prompt import SEPARATOR, PromptBuilder
from rag_service.storage.lexical import FTS_TABLE
from rag_service.storage.store import DocumentStore


def vector_ids(live: LiveIndex) -> np.ndarray:
    """Every vector id in the FAISS index (live or tombstoned)."""
    import faiss

    return faiss.vector_to_array(live._graph._index.id_map).copy()


def live_ids(live: LiveIndex) -> set[int]:
    """The vector ids of the passages the live index serves."""
    return set(live._passages)


def _ids(store: DocumentStore, sql: str) -> set[int]:
    db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute(sql)}
    finally:
        db.close()


def text_row_ids(store: DocumentStore) -> set[int]:
    """Every row id in the full-text index (it must equal the live chunks)."""
    return _ids(store, f"SELECT rowid FROM {FTS_TABLE}")


def live_vector_ids(store: DocumentStore) -> set[int]:
    return _ids(store, "SELECT vector_id FROM chunks WHERE deleted_seq IS NULL")


def context_text(prompts: PromptBuilder, hits: Sequence[Hit]) -> str:
    """The passages block as text: what the prompt's context token ids must decode to."""
    return SEPARATOR.join(prompts.passage_block(i, h.passage) for i, h in enumerate(hits, start=1))
