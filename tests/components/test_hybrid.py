"""Hybrid retrieval below the API: the full-text index stays in step with the documents through
upserts, replacements and deletes (same transaction), old databases get it on open, and the
retrievers (real encoder, SQLite FTS5, FAISS) rank, fuse and filter as documented."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import RetrieverSettings, Settings
from rag_service.domain import Document, Hit
from rag_service.embedding.encoder import Encoder
from rag_service.index.live import LiveIndex
from rag_service.ingestion.ingestor import Ingestor, chunker_for, open_or_create
from rag_service.prompting.prompt import PromptBuilder
from rag_service.retrieval.passages import DENSE, LEXICAL, PassageSearch
from rag_service.storage.store import DocumentStore, DocumentWrite, SearchInterrupted
from tests.support.inspection import live_vector_ids, text_row_ids

DOCS = [
    Document("kettle", "Kettles", "A whistling kettle sings when the water inside reaches a rolling boil."),
    Document("bike", "Bicycles", "A bicycle chain carries the force of the pedals to the rear sprocket."),
    Document("bees", "Honeybees", "Worker bees perform a waggle dance to tell the hive where nectar is."),
]


@pytest.fixture
def ingestor(tmp_path: Path, encoder: Encoder, settings: Settings) -> Iterator[Ingestor]:
    live = open_or_create(tmp_path / "idx", encoder, settings)
    yield Ingestor(live, encoder, chunker_for(encoder, settings))
    live.close()


def _consistent(store: DocumentStore) -> set[int]:
    """The full-text rows are exactly the live chunks."""
    live = live_vector_ids(store)
    assert text_row_ids(store) == live
    return live


def _lexical_docs(store: DocumentStore, live: LiveIndex, text: str) -> list[str]:
    hits = store.text_search(text, 10)
    return [p.doc_id for vid, _ in hits if (p := live.passage(vid)) is not None]


def test_upsert_replace_delete_keep_the_text_index_in_step(ingestor: Ingestor) -> None:
    store, live = ingestor.store, ingestor.live
    ingestor.upsert(DOCS)
    assert len(_consistent(store)) == 3
    assert _lexical_docs(store, live, "waggle dance") == ["bees"]

    ingestor.upsert(DOCS)  # an idempotent re-send adds no row twice
    assert len(_consistent(store)) == 3

    # Replacing a document swaps its full-text rows: the old words are gone, the new ones found.
    ingestor.upsert([Document("bees", "Honeybees", "Drones are male bees that do not gather pollen.")])
    _consistent(store)
    assert _lexical_docs(store, live, "waggle dance") == []
    assert _lexical_docs(store, live, "drones pollen") == ["bees"]

    ingestor.delete("kettle")
    assert len(_consistent(store)) == 2
    assert _lexical_docs(store, live, "whistling kettle") == []


def test_a_failed_batch_leaves_neither_index_changed(ingestor: Ingestor, encoder: Encoder) -> None:
    store = ingestor.store
    ingestor.upsert(DOCS)
    before = _consistent(store)
    doc = Document("kettle", "Kettles", "An electric kettle switches itself off.")
    replacement = DocumentWrite(doc, [doc.text], encoder.encode_passages([doc.text]))  # drops old rows
    # A chunk SQLite cannot store fails the batch after the replacement's rows were changed.
    broken = DocumentWrite(Document("new", "", "x"), [object()], np.zeros((1, 384)))  # type: ignore[list-item]
    with pytest.raises(sqlite3.Error):
        store.write(upserts=[replacement, broken])
    assert _consistent(store) == before, "a rolled-back batch changed one of the indexes"
    assert _lexical_docs(store, ingestor.live, "whistling kettle") == ["kettle"]


def test_an_older_database_gets_its_text_index_on_open(
    tmp_path: Path, encoder: Encoder, settings: Settings
) -> None:
    folder = tmp_path / "idx"
    live = open_or_create(folder, encoder, settings)
    Ingestor(live, encoder, chunker_for(encoder, settings)).upsert(DOCS)
    live.close()
    # What a database written before the full-text index looks like: no chunk_fts table.
    db = sqlite3.connect(folder / "documents.sqlite3")
    db.execute("DROP TABLE chunk_fts")
    db.commit()
    db.close()
    live = LiveIndex.open(folder, encoder.index_spec(), settings.index)
    try:
        assert len(_consistent(live.store)) == 3
        assert _lexical_docs(live.store, live, "bicycle pedals") == ["bike"]
    finally:
        live.close()


def test_a_late_text_search_is_interrupted_inside_sqlite(tmp_path: Path) -> None:
    store = DocumentStore.create(tmp_path, {"encoder": "none", "dimension": 4})
    try:
        # Enough rows that the query runs well past SQLite's progress-handler interval.
        words = ["alpha", "beta", "gamma", "delta"]
        docs = [Document(f"d{i}", "", f"{words[i % 4]} common text number {i}") for i in range(3000)]
        store.write(upserts=[DocumentWrite(d, [d.text], np.zeros((1, 4))) for d in docs])
        with pytest.raises(SearchInterrupted):  # the store's own error: callers need not know SQLite
            store.text_search("common alpha", 10, until=time.monotonic() - 1)
        assert len(store.text_search("common alpha", 10, until=time.monotonic() + 60)) == 10
    finally:
        store.close()


# --- the retrievers on the default index --------------------------------------------------------


@pytest.fixture(scope="module")
def retriever(
    settings: Settings, encoder: Encoder, prompts: PromptBuilder, default_index_dir: Path
) -> Iterator[PassageSearch]:
    spec = encoder.index_spec()
    live = LiveIndex.open(default_index_dir, spec, settings.index)
    yield PassageSearch(live, prompts, RetrieverSettings(candidates=50))
    live.close()


def _ranks(hits: list[Hit], name: str) -> list[int]:
    return [h.retrievers[name] for h in hits]


def test_each_retriever_ranks_and_fusion_keeps_both_ranks(retriever: PassageSearch, encoder: Encoder) -> None:
    question = "What does the pass statement do?"
    vector = encoder.encode_queries([question])[0]
    dense = retriever.search(vector, 50)
    lexical = retriever.search_text(question, 50)
    assert _ranks(dense, DENSE) == list(range(1, 51))
    assert _ranks(lexical, LEXICAL) == list(range(1, len(lexical) + 1))
    assert dense[0].passage.doc_id == "pyref:pass" and lexical[0].passage.doc_id == "pyref:pass"

    fused = retriever.fuse(dense, lexical, 10)
    assert len(fused) == 10 and fused[0].passage.doc_id == "pyref:pass"
    assert fused[0].retrievers == {DENSE: 1, LEXICAL: 1}
    dense_rank = {h.passage.id: r for r, h in enumerate(dense, start=1)}
    lexical_rank = {h.passage.id: r for r, h in enumerate(lexical, start=1)}
    for hit in fused:  # each rank is the passage's real place in that list, and only lists that had it
        expected = {DENSE: dense_rank.get(hit.passage.id), LEXICAL: lexical_rank.get(hit.passage.id)}
        assert hit.retrievers == {k: v for k, v in expected.items() if v is not None}
        assert hit.score == pytest.approx(sum(1 / (60 + r) for r in hit.retrievers.values()))
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)


def test_text_search_only_returns_what_the_live_index_holds(ingestor: Ingestor, encoder: Encoder) -> None:
    """A batch committed by another process is in the database before this process applies it:
    neither retriever may return it until then, so the two agree on what exists."""
    ingestor.upsert(DOCS)
    retriever = PassageSearch(ingestor.live, None)  # type: ignore[arg-type]  # no packing here
    doc = Document("owl", "Owls", "A barn owl hunts voles at night by sound alone.")
    ingestor.store.write(upserts=[DocumentWrite(doc, [doc.text], encoder.encode_passages([doc.text]))])
    assert ingestor.store.text_search("barn owl voles", 5), "committed rows are in the text index"
    assert retriever.search_text("barn owl voles", 5) == []
    ingestor.live.catch_up()
    assert [h.passage.doc_id for h in retriever.search_text("barn owl voles", 5)] == ["owl"]


@pytest.mark.parametrize(
    "text",
    ['"unbalanced', "NEAR(pass statement)", "pass* OR", "\x00 \u202e 🐍 pass", "the of and", "x" * 4000],
)
def test_hostile_text_on_the_real_index_is_a_valid_query(retriever: PassageSearch, text: str) -> None:
    hits = retriever.search_text(text, 5)
    if "pass" in text:
        assert "pyref:pass" in [h.passage.doc_id for h in hits]
