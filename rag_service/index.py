"""FAISS ``IndexHNSWFlat`` over normalized vectors (inner product = cosine), saved with a manifest.

The manifest names the encoder, dimension, metric and normalization that built the vectors; loading
refuses an index built by another encoder, because its vectors would be meaningless to the queries
(version skew). Files are written to a temporary name, fsynced and renamed, so a crash never leaves
a half-written index in place.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.config import IndexSettings
from rag_service.errors import IndexUnavailable

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """What the vectors are: anything that differs between index and encoder is version skew."""

    encoder: str
    dimension: int
    metric: str = METRIC
    normalized: bool = True


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync it, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class HnswIndex:
    """HNSW graph over float32 vectors; ids are insertion positions (0..ntotal-1)."""

    def __init__(self, spec: IndexSpec, settings: IndexSettings, faiss_index: Any = None) -> None:
        import faiss

        self.spec = spec
        self.settings = settings
        if faiss_index is None:
            faiss_index = faiss.IndexHNSWFlat(spec.dimension, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            faiss_index.hnsw.efConstruction = settings.ef_construction
        self._index = faiss_index
        self._index.hnsw.efSearch = settings.ef_search
        # FAISS allows concurrent searches but not an add during a search.
        self._write_lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        vectors = self._check(vectors)
        with self._write_lock:
            self._index.add(vectors)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and ids per query row; missing neighbours have id -1."""
        vectors = self._check(vectors)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        scores, ids = self._index.search(vectors, k)
        return scores, ids

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.spec.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.spec.dimension}), got {vectors.shape}")
        return vectors

    def manifest(self) -> dict[str, Any]:
        return {
            "format": 1,
            "encoder": self.spec.encoder,
            "dimension": self.spec.dimension,
            "metric": self.spec.metric,
            "normalized": self.spec.normalized,
            "index_type": "IndexHNSWFlat",
            "hnsw_m": self.settings.hnsw_m,
            "ef_construction": self.settings.ef_construction,
            "count": self.ntotal,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {p: _version(p) for p in ("faiss-cpu", "faiss-gpu", "sentence-transformers")},
        }

    def save(self, folder: Path) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        with self._write_lock:
            data = faiss.serialize_index(self._index).tobytes()
            manifest = self.manifest()
        write_atomically(folder / INDEX_FILE, data)
        # The manifest goes last: an index folder with a manifest is complete.
        write_atomically(folder / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())

    @classmethod
    def load(cls, folder: Path, expected: IndexSpec, settings: IndexSettings) -> HnswIndex:
        import faiss

        manifest = read_manifest(folder)
        check_spec(manifest, expected, folder)
        data = np.frombuffer((folder / INDEX_FILE).read_bytes(), dtype=np.uint8)
        faiss_index = faiss.deserialize_index(data)
        if faiss_index.ntotal != manifest.get("count"):
            raise IndexUnavailable(
                f"index at {folder} holds {faiss_index.ntotal} vectors "
                f"but its manifest says {manifest.get('count')}"
            )
        return cls(expected, settings, faiss_index)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IndexUnavailable(
            f"no index at {folder} (missing {MANIFEST_FILE}); build it with `rag-service build-index`"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def check_spec(manifest: dict[str, Any], expected: IndexSpec, folder: Path) -> None:
    """Refuse an index whose vectors came from another encoder, dimension, metric or normalization."""
    found = IndexSpec(
        encoder=manifest.get("encoder", "?"),
        dimension=manifest.get("dimension", -1),
        metric=manifest.get("metric", "?"),
        normalized=manifest.get("normalized", False),
    )
    if found != expected:
        raise IndexUnavailable(
            f"index at {folder} was built with {found} but the service is configured with {expected}; "
            "rebuild the index with the configured encoder",
            code="index_encoder_mismatch",
        )
