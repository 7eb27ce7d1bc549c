"""One writer, private replica copies (the Ray Serve layout, without Ray): a replica starts from the
writer's snapshot bundle and follows its changes row for row: adds, replacements, deletes, paging; a
gap, foreign vectors and a foreign bundle are refused. Real encoder, FAISS and SQLite."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.errors import IndexUnavailable, InvalidRequest
from rag_service.index.follower import Follower
from rag_service.index.snapshot import IndexSpec
from rag_service.scaling.writer import EmbeddedDocument, IndexWriter
from rag_service.storage import replication
from rag_service.storage.replication import ChangeBatch
from rag_service.storage.store import STORE_FILE

KETTLE = Document(id="kettle", title="Kettles", text="A whistling kettle signals that the water has boiled.")
ANTS = Document(id="ants", title="Ants", text="Leafcutter ants farm a fungus on the leaves they carry home.")


class InProcessSource:
    """The writer as a replica sees it, without Ray; ``max_seqs`` forces paging."""

    def __init__(self, writer: IndexWriter, max_seqs: int = replication.MAX_SEQS_PER_BATCH) -> None:
        self.writer = writer
        self.max_seqs = max_seqs
        self.calls = 0

    def bundle(self) -> bytes:
        return asyncio.run(self.writer.bundle())

    def changes_since(self, seq: int) -> ChangeBatch:
        self.calls += 1
        return replication.export_changes(self.writer.live.store, seq, max_seqs=self.max_seqs)


@pytest.fixture
def writer(
    tmp_path: Path, default_index_dir: Path, settings: Settings, encoder: Encoder
) -> Iterator[IndexWriter]:
    shutil.copytree(default_index_dir, tmp_path / "writer" / settings.index.name)
    local = settings.model_copy(
        update={"index": settings.index.model_copy(update={"dir": tmp_path / "writer"})}
    )
    w = IndexWriter.open(local, encoder.index_spec())
    yield w
    w.close()


def _follower(tmp_path: Path, writer: IndexWriter, encoder: Encoder, source: InProcessSource) -> Follower:
    # refresh 0: the test pulls by hand (wait_for / pull), no background thread racing it.
    index = writer.settings.index.model_copy(update={"refresh_s": 0})
    return Follower.start(tmp_path / "replica", encoder.index_spec(), index, source)


def _rows(path: Path) -> tuple[list[tuple[object, ...]], ...]:
    """Everything a replica must hold as the writer does: chunk rows, documents, full-text rows, seq."""
    db = sqlite3.connect(path)
    try:
        return (
            db.execute(
                "SELECT vector_id, chunk_id, doc_id, title, text, embedding, seq, deleted_seq "
                "FROM chunks ORDER BY vector_id"
            ).fetchall(),
            db.execute("SELECT * FROM documents ORDER BY id").fetchall(),
            db.execute("SELECT rowid, title, text FROM chunk_fts ORDER BY rowid").fetchall(),
            db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchall(),
        )
    finally:
        db.close()


def _top(follower: Follower, encoder: Encoder, question: str) -> list[str]:
    return [h.passage.id for h in follower.live.search(encoder.encode_queries([question])[0], 4)]


def test_a_replica_starts_from_the_bundle_and_follows_every_kind_of_write(
    tmp_path: Path, writer: IndexWriter, encoder: Encoder
) -> None:
    source = InProcessSource(writer)
    follower = _follower(tmp_path, writer, encoder, source)
    try:
        assert len(follower.live) == len(writer.live) > 0
        question = "What does the global statement do?"
        assert _top(follower, encoder, question) == [
            h.passage.id for h in writer.live.search(encoder.encode_queries([question])[0], 4)
        ]
        added = asyncio.run(writer.upsert([KETTLE, ANTS]))
        assert follower.applied_seq < added.seq
        assert follower.wait_for(added.seq, timeout_s=5)
        assert _top(follower, encoder, "Why does my kettle whistle?")[0] == "kettle#0"
        assert follower.live.store.get("ants") is not None
        # A replacement and a delete: the old chunks become tombstones on the replica too.
        replaced = asyncio.run(writer.upsert([Document(id="kettle", title="Kettles", text="Kettles hum.")]))
        deleted = asyncio.run(writer.delete("ants"))
        assert deleted.seq == replaced.seq + 1
        follower.pull()
        assert follower.applied_seq == writer.last_seq() == deleted.seq
        assert follower.live.store.get("ants") is None
        stored = follower.live.store.get("kettle")
        assert stored is not None and stored.doc.text == "Kettles hum."
        assert "ants#0" not in _top(follower, encoder, "leafcutter ants fungus farming")
        # Row for row the writer's store: vector ids, tombstones, full-text index, sequence number.
        writer_rows = _rows(writer.live.store.path)
        assert _rows(follower.live.store.path) == writer_rows
        assert len(follower.live) == len(writer.live)
        assert follower.live.stats()["applied_seq"] == deleted.seq
    finally:
        follower.close()


def test_a_replica_far_behind_pages_through_the_changes(
    tmp_path: Path, writer: IndexWriter, encoder: Encoder
) -> None:
    source = InProcessSource(writer, max_seqs=2)
    follower = _follower(tmp_path, writer, encoder, source)
    try:
        for i in range(5):
            doc = Document(id=f"note-{i}", title="", text=f"Note number {i} about the {i}th tide of the sea.")
            asyncio.run(writer.upsert([doc]))
        asyncio.run(writer.delete("note-3"))
        calls = source.calls
        assert follower.pull() == writer.last_seq()
        assert source.calls - calls >= 3  # six batches, two per call
        assert _rows(follower.live.store.path) == _rows(writer.live.store.path)
    finally:
        follower.close()


def test_a_batch_that_would_leave_a_gap_is_refused(
    tmp_path: Path, writer: IndexWriter, encoder: Encoder
) -> None:
    follower = _follower(tmp_path, writer, encoder, InProcessSource(writer))
    try:
        asyncio.run(writer.upsert([KETTLE]))
        asyncio.run(writer.upsert([ANTS]))
        start = follower.live.store.last_seq()
        later = replication.export_changes(writer.live.store, start + 1)
        with pytest.raises(ValueError, match="this copy is at seq"):
            replication.apply_changes(follower.live.store, later)
        assert follower.live.store.last_seq() == start  # nothing applied
        again = replication.export_changes(writer.live.store, start)
        assert replication.apply_changes(follower.live.store, again) == writer.last_seq()
        assert replication.apply_changes(follower.live.store, again) == writer.last_seq()  # idempotent
    finally:
        follower.close()


def test_precomputed_vectors_are_checked_against_the_index_spec(
    writer: IndexWriter, encoder: Encoder
) -> None:
    chunks = [KETTLE.text]
    vectors = encoder.encode_passages([f"{KETTLE.title}\n{KETTLE.text}"])
    before = writer.last_seq()
    foreign = IndexSpec(encoder="some/other-encoder", dimension=encoder.dimension).as_meta()
    with pytest.raises(IndexUnavailable, match="cannot go into an index built with") as refused:
        asyncio.run(writer.write_embedded(foreign, [EmbeddedDocument(KETTLE, chunks, vectors)]))
    assert refused.value.code == "index_encoder_mismatch"
    with pytest.raises(InvalidRequest, match="embeddings of shape"):
        bad = EmbeddedDocument(KETTLE, chunks, np.zeros((1, 7), dtype=np.float32))
        asyncio.run(writer.write_embedded(encoder.index_spec().as_meta(), [bad]))
    assert writer.last_seq() == before  # nothing written
    result = asyncio.run(
        writer.write_embedded(encoder.index_spec().as_meta(), [EmbeddedDocument(KETTLE, chunks, vectors)])
    )
    assert result.upserted == 1 and result.seq == before + 1
    hits = writer.live.search(encoder.encode_queries(["Why does my kettle whistle?"])[0], 1)
    assert hits[0].passage.doc_id == "kettle"


def test_a_bundle_of_another_encoder_is_refused(
    tmp_path: Path, writer: IndexWriter, encoder: Encoder
) -> None:
    other = IndexSpec(encoder="some/other-encoder", dimension=encoder.dimension)
    index = writer.settings.index.model_copy(update={"refresh_s": 0})
    with pytest.raises(IndexUnavailable, match="rag-service reindex") as refused:
        Follower.start(tmp_path / "replica", other, index, InProcessSource(writer))
    assert refused.value.code == "index_encoder_mismatch"


def test_the_bundle_holds_one_self_contained_store_file(tmp_path: Path, writer: IndexWriter) -> None:
    from rag_service.index.bundle import unpack_bundle

    unpack_bundle(asyncio.run(writer.bundle()), tmp_path / "unpacked")
    names = sorted(p.name for p in (tmp_path / "unpacked").iterdir())
    assert STORE_FILE in names and "manifest.json" in names and any(n.endswith(".faiss") for n in names)
    assert not any(n.endswith(("-wal", "-shm")) for n in names)
    db = sqlite3.connect(tmp_path / "unpacked" / STORE_FILE)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
