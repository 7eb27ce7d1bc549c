"""Ingestion into a durable index with the real encoder, SQLite store and FAISS: idempotent upserts,
deletes, replay after a restart, the background rebuild under concurrent searches, version skew and
bad input (refused whole, nothing partial stored)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import IndexSettings, Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.errors import IndexUnavailable, InvalidRequest
from rag_service.index.live import LiveIndex
from rag_service.index.snapshot import IndexSpec, index_state
from rag_service.ingestion.build import build_index, stored_documents
from rag_service.ingestion.corpus import python_reference_topics, read_jsonl, read_paths
from rag_service.ingestion.ingestor import Ingestor, chunker_for, embedding_text, open_or_create
from rag_service.prompting.prompt import PromptBuilder
from rag_service.storage.lexical import FTS_TABLE
from rag_service.storage.store import STORE_FILE, DocumentStore, DocumentWrite
from tests.support.inspection import live_ids, vector_ids
from tests.support.paths import REPO

# Short reference topics: real text, a chunk or two each, quick to embed.
TOPICS = ["pass", "break", "continue", "return", "del", "global", "nonlocal", "assert", "raise", "import"]


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    by_id = {d.id: d for d in python_reference_topics()}
    return [by_id[f"pyref:{t}"] for t in TOPICS]


def _settings(**index: object) -> Settings:
    return Settings(index=IndexSettings.model_validate(index))


@pytest.fixture
def live(tmp_path: Path, encoder: Encoder) -> Iterator[LiveIndex]:
    live = open_or_create(tmp_path / "idx", encoder, _settings())
    yield live
    live.close()


@pytest.fixture
def ingestor(live: LiveIndex, encoder: Encoder) -> Ingestor:
    return Ingestor(live, encoder, chunker_for(encoder, _settings()))


def _top_doc(live: LiveIndex, encoder: Encoder, text: str, k: int = 5) -> list[str]:
    return [h.passage.doc_id for h in live.search(encoder.encode_queries([text])[0], k)]


def _assert_exactly_once(live: LiveIndex) -> None:
    ids = vector_ids(live)
    assert len(ids) == len(set(ids.tolist())), "a vector is in the graph twice"
    assert live_ids(live) <= set(ids.tolist()), "a live chunk has no vector"


def test_upsert_is_idempotent_and_new_content_replaces_old_chunks(
    ingestor: Ingestor, live: LiveIndex, encoder: Encoder, corpus: list[Document]
) -> None:
    first = ingestor.upsert(corpus)
    assert first.upserted == len(corpus) and first.unchanged == 0 and first.chunks >= len(corpus)
    vectors = live.ntotal

    again = ingestor.upsert(corpus)
    assert (again.upserted, again.unchanged, again.chunks) == (0, len(corpus), 0)
    assert again.seq == first.seq, "an unchanged re-send takes no sequence number"
    assert live.ntotal == vectors and live.tombstones == 0

    new_text = "The pass statement was replaced: it now describes lighthouse keepers on foggy islands."
    changed = ingestor.upsert([Document("pyref:pass", "Lighthouses", new_text)])
    assert (changed.upserted, changed.unchanged, changed.chunks, changed.seq) == (1, 0, 1, first.seq + 1)
    stored = live.store.get("pyref:pass")
    assert stored is not None and stored.doc.text == new_text
    assert [c.id for c in stored.chunks] == ["pyref:pass#0"]
    hits = live.search(encoder.encode_queries(["lighthouse keepers on foggy islands"])[0], 20)
    assert hits[0].passage.id == "pyref:pass#0" and hits[0].passage.text == new_text
    # The old chunks are gone from search, and no passage comes back twice.
    old = live.search(encoder.encode_queries(["What does the pass statement do?"])[0], 20)
    assert all(h.passage.text == new_text for h in old if h.passage.doc_id == "pyref:pass")
    assert len({h.passage.id for h in old}) == len(old)
    assert live.store.stats()["documents"] == len(corpus)
    _assert_exactly_once(live)


def test_delete_takes_effect_in_the_next_search(
    ingestor: Ingestor, live: LiveIndex, encoder: Encoder, corpus: list[Document]
) -> None:
    ingestor.upsert(corpus)
    question = "What does the assert statement do?"
    assert _top_doc(live, encoder, question)[0] == "pyref:assert"
    result = ingestor.delete("pyref:assert")
    assert result.deleted == 1
    assert "pyref:assert" not in _top_doc(live, encoder, question, k=50)
    assert live.store.get("pyref:assert") is None
    assert ingestor.delete("pyref:assert").deleted == 0  # unknown now: nothing to do
    # top_k stays full although tombstoned vectors are still in the graph
    live_chunks = len(live)
    hits = live.search(encoder.encode_queries([question])[0], live_chunks)
    assert len(hits) == live_chunks and live.tombstones > 0


def test_restart_loads_the_snapshot_and_replays_newer_rows(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    folder = tmp_path / "idx"
    settings = _settings()
    live = open_or_create(folder, encoder, settings)
    ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
    ingestor.upsert(corpus[:5])
    live.snapshot()
    ingestor.upsert(corpus[5:])
    ingestor.delete("pyref:break")
    expected = live_ids(live)
    assert live.snapshot_seq < live.applied_seq
    # No close(): as after kill -9, the snapshot is older than the database.
    reopened = LiveIndex.open(folder, live.spec, settings.index)
    assert live_ids(reopened) == expected
    assert reopened.applied_seq == live.applied_seq
    _assert_exactly_once(reopened)
    assert "pyref:break" not in _top_doc(reopened, encoder, "break out of a loop", k=30)
    assert _top_doc(reopened, encoder, "What does the import statement do?")[0] == "pyref:import"
    reopened.close()
    live.close()


def test_background_rebuild_swaps_in_while_searches_continue(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    settings = _settings(rebuild_min_tombstones=1_000_000)  # we start the rebuild ourselves
    live = open_or_create(tmp_path / "idx", encoder, settings)
    ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
    ingestor.upsert(corpus)
    for doc in corpus[::2]:
        ingestor.delete(doc.id)
    deleted = {d.id for d in corpus[::2]}
    assert live.tombstones > 0
    queries = encoder.encode_queries([f"What does the {t} statement do?" for t in TOPICS])
    k = min(5, len(live))
    errors: list[BaseException] = []
    searched = [0]
    stop = threading.Event()

    def search_forever() -> None:
        try:
            while not stop.is_set():
                for q in queries:
                    hits = live.search(q, k)
                    assert len(hits) == k, "top_k must stay full during the swap"
                    assert not {h.passage.doc_id for h in hits} & deleted
                    searched[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=search_forever) for _ in range(3)]
    for t in threads:
        t.start()
    before = live.ntotal
    live.start_rebuild().join(timeout=120)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert searched[0] > 0
    assert live.rebuilds == 1
    assert live.tombstones == 0 and live.ntotal == len(live) < before
    assert live.snapshot_seq == live.applied_seq  # the rebuilt graph was snapshotted
    live.close()


def test_rebuild_starts_by_itself_past_the_tombstone_threshold(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    settings = _settings(rebuild_min_tombstones=3, rebuild_tombstone_ratio=0.1)
    live = open_or_create(tmp_path / "idx", encoder, settings)
    ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
    ingestor.upsert(corpus)
    for doc in corpus[:6]:
        ingestor.delete(doc.id)
    live.close()  # waits for a running rebuild
    assert live.rebuilds >= 1


def _pages_in_use(folder: Path) -> int:
    db = sqlite3.connect(folder / STORE_FILE)
    try:
        return int(
            db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
    finally:
        db.close()


def test_replaced_chunks_give_their_space_back(
    ingestor: Ingestor, live: LiveIndex, encoder: Encoder, corpus: list[Document]
) -> None:
    """Re-ingesting a changed corpus must not grow the database by every old copy: a tombstone keeps
    its row's ids, not its text and embedding, and the freed pages take the new chunks."""
    ingestor.upsert(corpus)
    first = _pages_in_use(live.folder)
    ids = sorted(live_ids(live))
    vids, vectors = live.store.live_embeddings(ids)
    chunks = {vid: p for vid in vids if (p := live.passage(vid)) is not None}
    assert len(chunks) == len(vids)
    rounds = 40
    for n in range(1, rounds + 1):  # every document gets new text (the real vectors are reused)
        writes = []
        for doc in corpus:
            mine = [i for i, vid in enumerate(vids) if chunks[vid].doc_id == doc.id]
            texts = [f"{chunks[vids[i]].text} (revision {n})" for i in mine]
            writes.append(
                DocumentWrite(Document(doc.id, doc.title, f"{doc.text} (revision {n})"), texts, vectors[mine])
            )
        live.store.write(upserts=writes)
        live.catch_up()
    stats = live.store.stats()
    assert stats["tombstoned_chunks"] == rounds * len(vids)
    grown = _pages_in_use(live.folder) - first
    # Kept whole, the old copies added 1,334 pages here (about one per chunk); stripped, 27.
    assert grown < rounds * len(vids) / 10, f"{grown} pages more after {rounds} rounds of {len(vids)} chunks"
    db = sqlite3.connect(live.folder / STORE_FILE)
    fat = "SELECT count(*) FROM chunks WHERE deleted_seq IS NOT NULL AND length(embedding) + length(text) > 0"
    assert db.execute(fat).fetchone()[0] == 0
    db.close()
    # Search sees the latest revision only, exactly once, before and after a rebuild.
    for _ in range(2):
        hits = live.search(encoder.encode_queries(["What does the assert statement do?"])[0], 5)
        assert hits[0].passage.doc_id == "pyref:assert" and hits[0].passage.text.endswith(
            f"(revision {rounds})"
        )
        _assert_exactly_once(live)
        live.start_rebuild().join(timeout=120)
    assert live.tombstones == 0 and len(live) == len(vids)


def _closed_index(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> tuple[Path, IndexSpec, set[int]]:
    """An index folder holding ``corpus``, closed: its folder, spec and live vector ids."""
    folder = tmp_path / "idx"
    settings = _settings()
    live = open_or_create(folder, encoder, settings)
    Ingestor(live, encoder, chunker_for(encoder, settings)).upsert(corpus)
    expected = live_ids(live)
    live.close()
    return folder, live.spec, expected


def test_old_tombstones_are_stripped_when_the_store_is_opened(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    """A database written before tombstones were stripped: they lose text and embedding once."""
    folder, spec, expected = _closed_index(tmp_path, encoder, corpus)
    db = sqlite3.connect(folder / STORE_FILE)
    with db:  # an old-style tombstone: the row kept whole
        db.execute("UPDATE chunks SET deleted_seq = 2 WHERE doc_id = 'pyref:assert'")
        db.execute("DELETE FROM documents WHERE id = 'pyref:assert'")
        db.execute(
            f"DELETE FROM {FTS_TABLE} WHERE rowid IN (SELECT vector_id FROM chunks WHERE deleted_seq = 2)"
        )
        db.execute("UPDATE meta SET value = '2' WHERE key = 'last_seq'")
    dead = {r[0] for r in db.execute("SELECT vector_id FROM chunks WHERE deleted_seq = 2")}
    db.close()
    reopened = LiveIndex.open(folder, spec, _settings().index)
    assert live_ids(reopened) == expected - dead
    db = sqlite3.connect(folder / STORE_FILE)
    rows = db.execute("SELECT vector_id, text, embedding FROM chunks WHERE deleted_seq = 2").fetchall()
    db.close()
    assert {r[0] for r in rows} == dead and all(r[1] == "" and r[2] == b"" for r in rows)
    assert reopened.store.stats()["free_bytes"] > 0, "the stripped bytes are free pages now"
    assert "pyref:assert" not in _top_doc(reopened, encoder, "What does the assert statement do?", k=30)
    reopened.close()


def test_compact_strips_old_tombstones_and_shrinks_the_file(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    folder, spec, expected = _closed_index(tmp_path, encoder, corpus)
    db = sqlite3.connect(folder / STORE_FILE)
    with db:  # 20 earlier versions of every chunk, tombstoned the old way: kept whole
        for _ in range(20):
            db.execute(
                "INSERT INTO chunks (chunk_id, doc_id, title, text, embedding, seq, deleted_seq) "
                "SELECT chunk_id, doc_id, title, text, embedding, 1, 2 FROM chunks WHERE deleted_seq IS NULL"
            )
        db.execute("UPDATE meta SET value = '2' WHERE key = 'last_seq'")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    before = (folder / STORE_FILE).stat().st_size

    done = _cli("compact", "--index-dir", str(folder))
    assert done.returncode == 0, done.stderr
    assert "MB ->" in done.stdout
    after = (folder / STORE_FILE).stat().st_size
    assert after < before / 4, (before, after)
    assert _cli("compact", "--index-dir", str(tmp_path / "none")).returncode == 2

    reopened = LiveIndex.open(folder, spec, _settings().index)  # same vector ids, same snapshot
    assert live_ids(reopened) == expected
    stats = reopened.store.stats()
    assert stats["tombstoned_chunks"] == 20 * len(expected)
    assert stats["free_bytes"] == 0 and stats["database_bytes"] == after
    assert _top_doc(reopened, encoder, "What does the assert statement do?")[0] == "pyref:assert"
    (top, _), *_ = reopened.store.text_search("assert statement", 5)
    passage = reopened.passage(top)
    assert passage is not None and passage.doc_id == "pyref:assert"
    _assert_exactly_once(reopened)
    reopened.close()


def test_a_rebuild_skips_chunks_another_process_deleted_meanwhile(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    """A chunk this process still serves may be tombstoned (and stripped) by another writer, an
    `ingest` run, before this process catches up: the rebuild leaves it out instead of failing."""
    folder = tmp_path / "idx"
    settings = _settings(rebuild_min_tombstones=1_000_000)
    live = open_or_create(folder, encoder, settings)
    Ingestor(live, encoder, chunker_for(encoder, settings)).upsert(corpus)
    other = DocumentStore.open(folder)
    assert other.write(deletes=["pyref:assert"]).deleted == 1
    other.close()
    assert any(p.doc_id == "pyref:assert" for p in map(live.passage, live_ids(live)) if p is not None)
    live.start_rebuild().join(timeout=120)
    assert live.rebuilds == 1, "the rebuild failed"
    live.catch_up()
    assert live.tombstones == 0 and live.ntotal == len(live)
    assert "pyref:assert" not in _top_doc(live, encoder, "What does the assert statement do?", k=30)
    _assert_exactly_once(live)
    live.close()


def test_index_from_another_encoder_is_refused_and_reindex_fixes_it(
    tmp_path: Path, encoder: Encoder, corpus: list[Document], prompts: PromptBuilder
) -> None:
    folder = tmp_path / "idx"
    other = IndexSpec(encoder="sentence-transformers/all-mpnet-base-v2", dimension=768)
    store = DocumentStore.create(folder, other.as_meta())
    rng = np.random.default_rng(0)
    store.write([DocumentWrite(d, [d.text[:200]], rng.standard_normal((1, 768))) for d in corpus[:3]])
    store.close()
    settings = _settings()
    spec = encoder.index_spec()
    with pytest.raises(IndexUnavailable) as err:
        LiveIndex.open(folder, spec, settings.index)
    assert err.value.code == "index_encoder_mismatch"
    assert "all-mpnet-base-v2" in err.value.message and encoder.model_id in err.value.message
    assert "reindex" in err.value.message
    # The service refuses to load it the same way (its /readyz reason is this message).
    from rag_service.runtime.service import Service

    service = Service(settings.model_copy(update={"index": IndexSettings(dir=tmp_path, name="idx")}))
    with pytest.raises(IndexUnavailable, match="all-mpnet-base-v2"):
        service._load_index(encoder, prompts)

    # reindex = re-embed the stored text with the configured encoder.
    build_index(stored_documents(folder), encoder, settings, folder, progress=False)
    live = LiveIndex.open(folder, spec, settings.index)
    assert _top_doc(live, encoder, "What does the break statement do?")[0] == "pyref:break"
    assert live.store.stats()["documents"] == 3
    live.close()


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([Document("", "t", "some text")], "id is empty"),
        ([Document("a", "t", "text"), Document("b", "t", "  \n ")], "text is empty"),
        ([Document("a", "t", "one"), Document("b", "t", "two"), Document("a", "t", "three")], "already used"),
    ],
    ids=["missing-id", "empty-text", "duplicate-ids"],
)
def test_bad_batch_is_refused_whole(
    ingestor: Ingestor, live: LiveIndex, corpus: list[Document], docs: list[Document], message: str
) -> None:
    ingestor.upsert(corpus[:2])
    before = live.store.stats()
    with pytest.raises(InvalidRequest, match=message):
        ingestor.upsert(docs)
    assert live.store.stats() == before
    assert live.store.get("a") is None


def test_corpus_readers_name_the_bad_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Alpha\n\nAlpha text.\n")
    (tmp_path / "notes" / "sub").mkdir()
    (tmp_path / "notes" / "sub" / "b.txt").write_text("Beta text, ünïcödé.\n")
    docs = read_paths([tmp_path / "notes"])
    assert [(d.id, d.title) for d in docs] == [("a.md", "Alpha"), ("sub/b.txt", "Beta text, ünïcödé.")]

    (tmp_path / "notes" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InvalidRequest, match=r"latin1\.txt: not UTF-8"):
        read_paths([tmp_path / "notes"])

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "fine"}\n{"title": "no id", "text": "x"}\n')
    with pytest.raises(InvalidRequest, match=r"bad\.jsonl:2: missing or empty _id"):
        list(read_jsonl(bad))
    bad.write_text('{"_id": "1", "text": ""}\n')
    with pytest.raises(InvalidRequest, match="has no text"):
        list(read_jsonl(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"_id": "1", "text": "one"}\n{"_id": "1", "text": "two"}\n')
    with pytest.raises(InvalidRequest, match="appears twice"):
        read_paths([dup])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "rag_service.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_cli_ingest_folder_resumes_and_refuses_bad_input_whole(tmp_path: Path, encoder: Encoder) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "kettle.md").write_text("# Kettles\n\nA kettle boils water for tea on a stove.\n")
    (folder / "bikes.txt").write_text("Bicycles have two wheels, pedals and a chain.\n")
    index = tmp_path / "idx"

    (folder / "broken.txt").write_bytes(b"\xff\xfe not utf-8")
    bad = _cli("ingest", str(folder), "--index-dir", str(index))
    assert bad.returncode == 2 and "broken.txt: not UTF-8" in bad.stderr
    assert not index.exists(), "nothing is written when any input is bad"
    (folder / "broken.txt").unlink()

    first = _cli("ingest", str(folder), "--index-dir", str(index), "--batch-size", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 new or changed" in first.stdout and "docs/s" in first.stdout
    assert "ingesting" in first.stderr  # the progress bar
    again = _cli("ingest", str(folder), "--index-dir", str(index))
    assert again.returncode == 0 and "0 new or changed" in again.stdout and "2 unchanged" in again.stdout

    live = LiveIndex.open(index, encoder.index_spec(), IndexSettings())
    assert _top_doc(live, encoder, "how do I boil water for tea?")[0] == "kettle.md"
    assert live.store.stats()["documents"] == 2
    live.close()


def test_old_format_folder_is_refused_then_rebuilt_by_build_index(
    tmp_path: Path, encoder: Encoder, corpus: list[Document]
) -> None:
    old = tmp_path / "default"
    old.mkdir()
    (old / "manifest.json").write_text('{"format": 1, "encoder": "sentence-transformers/all-MiniLM-L6-v2"}')
    (old / "passages.jsonl").write_text('{"id": "x#0", "doc_id": "x", "title": "", "text": "old"}\n')
    (old / "index.faiss").write_bytes(b"old")
    assert index_state(old) == "old"
    with pytest.raises(IndexUnavailable, match=r"old format.*build-index"):
        LiveIndex.open(old, encoder.index_spec(), IndexSettings())

    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps({"_id": d.id, "text": d.text[:300]}) + "\n" for d in corpus[:3]))
    result = _cli("build-index", "--corpus", str(small), env={"RAG_INDEX__DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "old index" in result.stdout and "indexed 3 documents" in result.stdout
    assert index_state(old) == "ready"
    skipped = _cli("build-index", env={"RAG_INDEX__DIR": str(tmp_path)})
    assert skipped.returncode == 0 and "already built" in skipped.stdout


def test_embedding_text_gives_chunks_their_title() -> None:
    assert embedding_text("Kettles", "boil water") == "Kettles\nboil water"
    assert embedding_text("Kettles", "Kettles boil water") == "Kettles boil water"
