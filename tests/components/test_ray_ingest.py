"""Ingestion on Ray Data (``rag-service ingest --ray``): an actor pool chunks and embeds real SciFact
abstracts, the one writer stores them with the chunks and vectors the in-process ingestor gives, a
re-run changes nothing, and the writer refuses foreign or misshapen vectors without touching the
store. Real Ray (one local cluster for the module), encoder, FAISS and SQLite."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_service.config import Settings
from rag_service.domain import Document
from rag_service.embedding.encoder import Encoder
from rag_service.errors import IndexUnavailable, InvalidRequest
from rag_service.index.live import LiveIndex
from rag_service.ingestion.corpus import read_jsonl
from rag_service.ingestion.ingestor import Ingestor, chunker_for, ingest_documents, open_or_create
from rag_service.scaling.writer import EmbeddedDocument, IndexWriter
from rag_service.storage.store import STORE_FILE
from tests.support.paths import scifact_dir

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytestmark = pytest.mark.ray

SAMPLE = 40  # SciFact abstracts: one to four chunks each


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return list(itertools.islice(read_jsonl(scifact_dir() / "corpus.jsonl"), SAMPLE + 3))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    from rag_service.scaling.launch import start_local_cluster

    start_local_cluster(2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_index(
    cluster: None, docs: list[Document], settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    """The first SAMPLE documents ingested on Ray into a fresh folder (in-process writer)."""
    from rag_service.scaling.ray_ingest import LocalWriter, ingest_with_ray

    folder = tmp_path_factory.mktemp("ray-ingest") / "index"
    target = LocalWriter(folder, settings)
    try:
        report = ingest_with_ray(docs[:SAMPLE], settings, target, progress=False)
    finally:
        target.close()
    return folder, report


@pytest.fixture(scope="module")
def reference_index(
    docs: list[Document], settings: Settings, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same documents through the normal in-process ingestor."""
    folder = tmp_path_factory.mktemp("reference") / "index"
    live = open_or_create(folder, encoder, settings)
    try:
        ingestor = Ingestor(live, encoder, chunker_for(encoder, settings))
        ingest_documents(ingestor, docs[:SAMPLE], settings.ingest.batch_docs, progress=False)
    finally:
        live.close()
    return folder


def _chunks(folder: Path) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """Live chunks by document: (chunk id, text, vector)."""
    db = sqlite3.connect(f"file:{folder / STORE_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT doc_id, chunk_id, text, embedding FROM chunks WHERE deleted_seq IS NULL "
            "ORDER BY vector_id"
        ).fetchall()
    finally:
        db.close()
    by_doc: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for doc_id, chunk_id, text, blob in rows:
        by_doc.setdefault(doc_id, []).append((chunk_id, text, np.frombuffer(blob, dtype=np.float32)))
    return by_doc


def _rows(folder: Path) -> tuple[list[tuple[object, ...]], ...]:
    db = sqlite3.connect(f"file:{folder / STORE_FILE}?mode=ro", uri=True)
    try:
        return (
            db.execute("SELECT * FROM chunks ORDER BY vector_id").fetchall(),
            db.execute("SELECT * FROM documents ORDER BY id").fetchall(),
            db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchall(),
        )
    finally:
        db.close()


def test_ray_ingestion_stores_what_the_ingestor_would(
    ray_index: tuple[Path, Any],
    reference_index: Path,
    docs: list[Document],
    settings: Settings,
    encoder: Encoder,
) -> None:
    folder, report = ray_index
    assert (report.documents, report.upserted, report.unchanged) == (SAMPLE, SAMPLE, 0)
    got, want = _chunks(folder), _chunks(reference_index)
    assert set(got) == set(want) == {d.id for d in docs[:SAMPLE]}
    assert report.chunks == sum(len(c) for c in want.values()) > SAMPLE  # some abstracts are split
    for doc_id, chunks in want.items():
        assert [(c, t) for c, t, _ in got[doc_id]] == [(c, t) for c, t, _ in chunks], doc_id
        np.testing.assert_allclose(
            np.stack([v for _, _, v in got[doc_id]]), np.stack([v for _, _, v in chunks]), atol=1e-5
        )
    # Searchable: a known item is found by its title.
    target = docs[7]
    live = LiveIndex.open(folder, encoder.index_spec(), settings.index)
    try:
        hits = live.search(encoder.encode_queries([target.title])[0], 5)
    finally:
        live.close()
    assert target.id in [h.passage.doc_id for h in hits]


def test_ray_reingestion_changes_nothing(
    ray_index: tuple[Path, Any], docs: list[Document], settings: Settings
) -> None:
    from rag_service.scaling.ray_ingest import LocalWriter, ingest_with_ray

    folder, _ = ray_index
    before = _rows(folder)
    target = LocalWriter(folder, settings)
    try:
        report = ingest_with_ray(docs[:SAMPLE], settings, target, progress=False)
    finally:
        target.close()
    assert (report.upserted, report.unchanged, report.chunks) == (0, SAMPLE, 0)
    assert _rows(folder) == before


def test_writer_refuses_foreign_and_misshapen_vectors(
    ray_index: tuple[Path, Any], settings: Settings, encoder: Encoder, tmp_path: Path
) -> None:
    folder = tmp_path / "index"
    shutil.copytree(ray_index[0], folder)
    stored = _chunks(folder)
    before = _rows(folder)
    live = LiveIndex.open(folder, encoder.index_spec(), settings.index)
    writer = IndexWriter(live, settings)
    try:
        spec = writer.spec()
        doc_id = next(iter(stored))
        doc = live.store.get(doc_id)
        assert doc is not None
        chunks = [t for _, t, _ in stored[doc_id]]
        vectors = np.stack([v for _, _, v in stored[doc_id]])
        changed = Document(doc.doc.id, doc.doc.title, doc.doc.text + " (revised)")

        foreign = {**spec, "encoder": "someone/else-MiniLM", "dimension": 384}
        with pytest.raises(IndexUnavailable) as refused:
            asyncio.run(writer.write_embedded(foreign, [EmbeddedDocument(changed, chunks, vectors)]))
        assert refused.value.code == "index_encoder_mismatch"

        short = vectors[:, :-1]
        with pytest.raises(InvalidRequest, match="embeddings of shape"):
            asyncio.run(writer.write_embedded(spec, [EmbeddedDocument(changed, chunks, short)]))

        # The same content again is left alone by the store itself.
        same = asyncio.run(writer.write_embedded(spec, [EmbeddedDocument(doc.doc, chunks, vectors)]))
        assert (same.upserted, same.unchanged) == (0, 1)
    finally:
        writer.close()
    assert _rows(folder) == before


def test_cli_ingest_ray_adds_only_new_documents(
    ray_index: tuple[Path, Any], docs: list[Document], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import orjson

    from rag_service import cli

    folder = tmp_path / "index"
    shutil.copytree(ray_index[0], folder)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(
        b"".join(orjson.dumps({"_id": d.id, "title": d.title, "text": d.text}) + b"\n" for d in docs)
    )
    ack = tmp_path / "ack.log"
    code = cli.main(["ingest", "--ray", "--index-dir", str(folder), "--ack-log", str(ack), str(corpus)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 new or changed" in out and f"{SAMPLE} unchanged" in out
    assert sorted(ack.read_text().split()) == sorted(d.id for d in docs)
    assert set(_chunks(folder)) == {d.id for d in docs}
    assert ray.is_initialized()  # the module's cluster: the command joined it, and left it running


def test_bad_input_is_refused_before_ray_runs(
    cluster: None, docs: list[Document], settings: Settings, tmp_path: Path
) -> None:
    from rag_service.scaling.ray_ingest import LocalWriter, ingest_with_ray

    target = LocalWriter(tmp_path / "index", settings)
    bad = [*docs[:3], Document(docs[0].id, "again", "the same id twice")]
    with pytest.raises(InvalidRequest, match="already used by documents"):
        ingest_with_ray(bad, settings, target, progress=False)
    target.close()
    assert not (tmp_path / "index").exists()  # nothing was written, not even an empty store
