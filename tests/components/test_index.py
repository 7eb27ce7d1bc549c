"""HNSW against exact search on real SciFact embeddings; save/load; the version-skew guard."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import IndexSettings
from rag_service.embedding.encoder import Encoder
from rag_service.errors import IndexUnavailable
from rag_service.index.faiss_index import FaissIndex
from rag_service.index.snapshot import MANIFEST_FILE, IndexSpec
from rag_service.ingestion.corpus import read_jsonl
from tests.support.paths import scifact_dir

SAMPLE_SIZE = 1200


@pytest.fixture(scope="module")
def scifact_vectors(encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic sample: every abstract judged relevant to a shared query, filled up to
    SAMPLE_SIZE with abstracts in sha256(id) order; and every shared query."""
    folder = scifact_dir()
    relevant = {line.split("\t")[1] for line in (folder / "qrels.tsv").read_text().splitlines()[1:] if line}
    docs = list(read_jsonl(folder / "corpus.jsonl"))
    ordered = sorted(docs, key=lambda d: (d.id not in relevant, hashlib.sha256(d.id.encode()).hexdigest()))
    sample = ordered[:SAMPLE_SIZE]
    queries = [
        json.loads(line)["text"] for line in (folder / "queries.jsonl").read_text().splitlines() if line
    ]
    doc_vectors = encoder.encode_passages([f"{d.title}\n{d.text}" for d in sample])
    return doc_vectors, encoder.encode_queries(queries)


def _exact_top(doc_vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(doc_vectors.shape[1])
    flat.add(doc_vectors)
    return flat.search(query_vectors, k)[1]


def _spec(encoder: Encoder) -> IndexSpec:
    return encoder.index_spec()


def test_hnsw_recall_at_10_against_exact(
    scifact_vectors: tuple[np.ndarray, np.ndarray], encoder: Encoder
) -> None:
    doc_vectors, query_vectors = scifact_vectors
    assert len(doc_vectors) >= 1000 and len(query_vectors) >= 200
    index = FaissIndex(_spec(encoder), IndexSettings())  # the service's default M / efConstruction / efSearch
    index.add(doc_vectors)
    _, approx = index.search(query_vectors, 10)
    exact = _exact_top(doc_vectors, query_vectors, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    print(f"HNSW recall@10 vs exact on {len(doc_vectors)} SciFact abstracts: {recall:.4f}")
    assert recall >= 0.99


def test_save_then_load_gives_identical_results(
    scifact_vectors: tuple[np.ndarray, np.ndarray], encoder: Encoder, tmp_path: Path
) -> None:
    doc_vectors, query_vectors = scifact_vectors
    index = FaissIndex(_spec(encoder), IndexSettings())
    index.add(doc_vectors[:500], ids=np.arange(1000, 1500))
    before = index.search(query_vectors, 10)
    assert before[1].min() >= 1000  # results carry the ids given, not positions
    index.save(tmp_path, applied_seq=7)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["encoder"] == encoder.model_id
    assert manifest["dimension"] == 384
    assert manifest["metric"] == "inner_product"
    assert manifest["normalized"] is True
    assert manifest["count"] == 500 and manifest["applied_seq"] == 7
    assert manifest["versions"]["faiss-cpu"]
    loaded, seq = FaissIndex.load(tmp_path, _spec(encoder), IndexSettings())
    assert seq == 7
    after = loaded.search(query_vectors, 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_index_from_another_encoder_is_refused(encoder: Encoder, tmp_path: Path) -> None:
    index = FaissIndex(_spec(encoder), IndexSettings())
    index.add(encoder.encode_passages(["one passage", "another passage"]))
    index.save(tmp_path, applied_seq=1)
    other = IndexSpec(encoder="sentence-transformers/all-mpnet-base-v2", dimension=768)
    with pytest.raises(IndexUnavailable) as err:
        FaissIndex.load(tmp_path, other, IndexSettings())
    assert "all-mpnet-base-v2" in err.value.message and encoder.model_id in err.value.message
    with pytest.raises(IndexUnavailable):
        FaissIndex.load(
            tmp_path, IndexSpec(encoder=encoder.model_id, dimension=384, normalized=False), IndexSettings()
        )


def test_missing_index_is_a_clear_error(encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(IndexUnavailable, match="build-index"):
        FaissIndex.load(tmp_path / "nothing-here", _spec(encoder), IndexSettings())


def test_wrong_vector_shape_is_refused(encoder: Encoder) -> None:
    index = FaissIndex(_spec(encoder), IndexSettings())
    with pytest.raises(ValueError):
        index.add(np.zeros((2, 10), dtype=np.float32))


# --- backends: exact flat search (CPU, and the GPU path's CPU-side form) ----------------------------


def test_flat_backend_is_exact_and_persists(
    scifact_vectors: tuple[np.ndarray, np.ndarray], encoder: Encoder, tmp_path: Path
) -> None:
    doc_vectors, query_vectors = scifact_vectors
    settings = IndexSettings(backend="flat")
    index = FaissIndex(_spec(encoder), settings)
    assert index.backend == "flat"
    index.add(doc_vectors)
    _, ids = index.search(query_vectors, 10)
    np.testing.assert_array_equal(ids, _exact_top(doc_vectors, query_vectors, 10))
    index.save(tmp_path, applied_seq=3)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["index_type"] == "IndexIDMap2(IndexFlatIP)" and manifest["backend"] == "flat"
    loaded, _ = FaissIndex.load(tmp_path, _spec(encoder), settings)
    np.testing.assert_array_equal(loaded.search(query_vectors, 10)[1], ids)


def test_a_snapshot_of_another_backend_is_not_loaded(encoder: Encoder, tmp_path: Path) -> None:
    """An HNSW snapshot opened with the flat backend (e.g. an index moved to a GPU machine) is refused
    here, and LiveIndex then rebuilds the graph from the stored embeddings."""
    index = FaissIndex(_spec(encoder), IndexSettings(backend="hnsw"))
    index.add(encoder.encode_passages(["one passage", "another passage"]))
    index.save(tmp_path, applied_seq=1)
    with pytest.raises(IndexUnavailable, match="backend"):
        FaissIndex.load(tmp_path, _spec(encoder), IndexSettings(backend="flat"))


@pytest.mark.gpu
def test_gpu_flat_backend_matches_exact_and_snapshots_as_a_cpu_index(
    scifact_vectors: tuple[np.ndarray, np.ndarray], encoder: Encoder, tmp_path: Path
) -> None:
    doc_vectors, query_vectors = scifact_vectors
    settings = IndexSettings(backend="gpu-flat")
    index = FaissIndex(_spec(encoder), settings)
    index.add(doc_vectors, ids=np.arange(100, 100 + len(doc_vectors)))
    _, ids = index.search(query_vectors, 10)
    np.testing.assert_array_equal(ids - 100, _exact_top(doc_vectors, query_vectors, 10))
    index.save(tmp_path, applied_seq=2)
    loaded, _ = FaissIndex.load(tmp_path, _spec(encoder), settings)
    np.testing.assert_array_equal(loaded.search(query_vectors, 10)[1], ids)
