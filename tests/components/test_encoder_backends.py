"""The ONNX encoder backends against sentence-transformers itself, on real text.

Tolerances (measured 2026-12-02 on 90 SciFact claims and abstracts, BENCHMARKS.md "Encoder backends"):
``onnx`` is the same float32 graph (cosine >= 0.9999); ``onnx-int8`` has int8 weights and activations
quantized per batch: lowest cosine seen 0.990 on real text, 0.976 for an empty text (its two special
tokens alone), 0.988 between a text alone and in a batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag_service.config import EncoderSettings
from rag_service.embedding.encoder import Encoder, resolve_encoder_path
from rag_service.embedding.onnx_export import (
    MANIFEST_FILE,
    OnnxVariant,
    ensure_export,
    export_folder,
    source_hash,
    stale_reason,
)
from rag_service.embedding.onnx_model import OnnxSentenceModel
from rag_service.errors import IndexUnavailable
from rag_service.index.snapshot import IndexSpec, check_spec
from tests.support.paths import SHARED_DATA

MIN_COSINE = {("onnx", "real"): 0.9999, ("onnx", "edge"): 0.9999}
MIN_COSINE |= {("onnx-int8", "real"): 0.985, ("onnx-int8", "edge"): 0.97}
# int8 on an AVX2 CPU without VNNI is the least exact (ONNX Runtime's u8 x s8 products there): on the
# edge texts, mean 0.9836 on an AMD EPYC Zen 1 (2026-12-03), 0.99+ with VNNI.
MEAN_COSINE = {("onnx", "real"): 0.99999, ("onnx", "edge"): 0.99999}
MEAN_COSINE |= {("onnx-int8", "real"): 0.985, ("onnx-int8", "edge"): 0.98}

EDGE_TEXTS = [
    "",
    "   ",
    "  leading and trailing spaces  ",
    "ünïcödé ✓ 日本語のテキスト, emoji 🚀🐍 and RTL עברית",
    "What does the global statement do?",
    # Past the 256-token truncation limit: both must cut it at the same token.
    "The HNSW graph links every vector to its nearest neighbours on several layers. " * 40,
]


def real_texts() -> list[str]:
    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"shared SciFact data not found at {folder}: real-text comparison needs it")
    claims = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open()][:40]
    with (folder / "corpus.jsonl").open() as f:
        abstracts = [f"{r['title']}\n{r['text']}" for r in map(json.loads, list(f)[:50])]
    return claims + abstracts


@pytest.fixture(scope="module")
def plain():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder_path(EncoderSettings().model), device="cpu")


@pytest.fixture(scope="module", params=["onnx", "onnx-int8"])
def backend(request) -> Encoder:
    return Encoder(EncoderSettings(backend=request.param))


def test_tokenization_is_sentence_transformers_own(backend: Encoder, plain) -> None:
    texts = EDGE_TEXTS + real_texts()[:10]
    ours = backend._onnx.tokenize(texts)
    theirs = plain.tokenize(texts)
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(ours[name], theirs[name].numpy(), err_msg=name)
    assert ours["input_ids"].shape[1] == backend.max_seq_length == plain.max_seq_length


@pytest.mark.parametrize("texts", ["edge", "real"])
def test_vectors_match_sentence_transformers(backend: Encoder, plain, texts: str) -> None:
    batch = EDGE_TEXTS if texts == "edge" else real_texts()
    expected = plain.encode(batch, normalize_embeddings=True, batch_size=16)
    got = backend.encode_passages(batch)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() >= MIN_COSINE[backend.backend, texts], batch[int(cosine.argmin())][:80]
    assert cosine.mean() >= MEAN_COSINE[backend.backend, texts]


def test_one_question_alone_and_in_a_batch(backend: Encoder) -> None:
    texts = real_texts()[:16]
    alone = np.vstack([backend.encode_queries([t]) for t in texts])
    together = backend.encode_queries(texts)
    floor = 0.99999 if backend.backend == "onnx" else 0.98
    assert (alone * together).sum(axis=1).min() >= floor


def test_the_manifest_says_what_the_export_is(backend: Encoder) -> None:
    manifest = backend._onnx.manifest
    source = Path(resolve_encoder_path(backend.model_id))
    assert manifest["backend"] == backend.backend
    assert manifest["source"] == backend.model_id
    assert manifest["source_sha256"] == source_hash(source)
    assert manifest["opset"] == 17 and manifest["dimension"] == 384 and manifest["max_seq_length"] == 256
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "sentence-transformers"}
    assert manifest["fusions"]["Attention"] == 6  # all six layers' attention fused
    quantization = manifest["quantization"]
    if backend.backend == "onnx-int8":
        assert quantization["method"] == "dynamic" and quantization["per_channel"] is True
        assert backend.index_spec().quantization == "int8-dynamic"
    else:
        assert quantization is None and backend.index_spec().quantization == "none"


def test_a_stale_export_is_rebuilt_on_load(tmp_path: Path) -> None:
    """An export whose manifest names other weights is not used: it is exported again."""
    source = Path(resolve_encoder_path(EncoderSettings().model))
    variant = OnnxVariant("onnx")
    folder = export_folder(tmp_path, "m", variant)
    ensure_export(source, EncoderSettings().model, Path(EncoderSettings().onnx_dir), variant)
    shutil.copytree(export_folder(Path(EncoderSettings().onnx_dir), EncoderSettings().model, variant), folder)
    assert stale_reason(json.loads((folder / MANIFEST_FILE).read_text()), source, variant) is None
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["source_sha256"] = "0" * 64
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert stale_reason(manifest, source, variant) == "the source weights changed since the export"
    ensure_export(source, "m", tmp_path, variant)
    assert json.loads((folder / MANIFEST_FILE).read_text())["source_sha256"] == source_hash(source)


def test_a_folder_without_manifest_is_refused(tmp_path: Path) -> None:
    source = Path(resolve_encoder_path(EncoderSettings().model))
    with pytest.raises(ValueError, match="prepare-models"):
        OnnxSentenceModel(tmp_path, source)


def test_measured_interchangeable_quantizations_share_an_index(backend: Encoder) -> None:
    """int8 queries over a float32-built index ranked within 0.005 nDCG@10 (BENCHMARKS.md)."""
    built_by_torch = IndexSpec(encoder=backend.model_id, dimension=384, encoder_backend="torch")
    check_spec(built_by_torch.as_meta(), backend.index_spec(), Path("idx"))


def test_an_unmeasured_quantization_is_version_skew(backend: Encoder) -> None:
    other = IndexSpec(encoder=backend.model_id, dimension=384, quantization="int4-awq", encoder_backend="x")
    with pytest.raises(IndexUnavailable, match=r"quantization int4-awq.*rag-service reindex") as caught:
        check_spec(other.as_meta(), backend.index_spec(), Path("idx"))
    assert caught.value.code == "index_encoder_mismatch"


def test_an_index_of_another_model_is_version_skew(backend: Encoder) -> None:
    other = IndexSpec(encoder="sentence-transformers/all-mpnet-base-v2", dimension=768)
    with pytest.raises(IndexUnavailable, match="all-mpnet-base-v2"):
        check_spec(other.as_meta(), backend.index_spec(), Path("idx"))


def test_reindex_converts_an_index_to_the_configured_backend(tmp_path: Path) -> None:
    """Built by sentence-transformers, re-embedded by onnx-int8: the store and the snapshot manifest
    then say so, and the converted index still finds the right topic."""
    from rag_service.config import Settings
    from rag_service.index.live import LiveIndex
    from rag_service.index.snapshot import read_manifest
    from rag_service.ingestion.build import build_index, stored_documents
    from rag_service.ingestion.corpus import python_reference_topics
    from rag_service.storage.store import DocumentStore

    folder, settings = tmp_path / "idx", Settings()
    docs = [d for d in python_reference_topics() if d.id in ("pyref:break", "pyref:global", "pyref:lambda")]
    build_index(docs, Encoder(EncoderSettings(backend="torch")), settings, folder, progress=False)
    store = DocumentStore.open(folder)
    assert (store.meta()["encoder_backend"], store.meta()["quantization"]) == ("torch", "none")
    store.close()

    int8 = Encoder(EncoderSettings(backend="onnx-int8"))
    build_index(stored_documents(folder), int8, settings, folder, progress=False)
    store = DocumentStore.open(folder)
    meta = store.meta()
    store.close()
    assert (meta["encoder_backend"], meta["quantization"]) == ("onnx-int8", "int8-dynamic")
    manifest = read_manifest(folder)
    assert (manifest["encoder_backend"], manifest["quantization"]) == ("onnx-int8", "int8-dynamic")
    live = LiveIndex.open(folder, int8.index_spec(), settings.index)
    try:
        hits = live.search(int8.encode_queries(["How do I leave a loop early?"])[0], 1)
        assert hits[0].passage.doc_id == "pyref:break"
    finally:
        live.close()
