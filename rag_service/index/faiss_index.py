"""``FaissIndex``: the FAISS index of one folder's vectors, on whichever backend is configured.

HNSW on the CPU (the default), or an exact flat index (``flat`` on the CPU, ``gpu-flat`` on a GPU).
Concurrency: a readers-writer lock (``rwlock.py``); adds take it in slices of ``ADD_SLICE`` vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.config import IndexSettings
from rag_service.errors import IndexUnavailable
from rag_service.index.rwlock import ReadWriteLock
from rag_service.index.snapshot import FORMAT, IndexSpec, check_spec, read_manifest, write_snapshot
from rag_service.runtime.hardware import IndexBackend, faiss_gpus, index_backend

ADD_SLICE = 16  # vectors added per write-lock hold: bounds how long a search can wait


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class FaissIndex:
    """FAISS ``IndexIDMap2`` over normalized vectors (inner product = cosine); ids are the store's
    vector ids. The vectors sit in an ``IndexHNSWFlat`` on the CPU (the default), or in an exact flat
    index: ``flat`` on the CPU, ``gpu-flat`` on a GPU (FAISS has no HNSW on GPUs; a flat scan there is
    exact, needs no training and takes incremental adds, unlike IVF or CAGRA). Snapshots are always
    CPU indexes, so the persistence and manifest are the same on every backend."""

    def __init__(
        self,
        spec: IndexSpec,
        settings: IndexSettings,
        faiss_index: Any = None,
        backend: IndexBackend | None = None,
    ) -> None:
        import faiss

        self.spec = spec
        self.settings = settings
        self.backend: IndexBackend = backend or index_backend(settings.backend, faiss_gpus())
        if faiss_index is None:
            faiss_index = faiss.IndexIDMap2(self._new_storage())
        elif self.backend == "gpu-flat":
            faiss_index = _to_gpu(faiss_index)
        self._index = faiss_index
        inner: Any = faiss.downcast_index(faiss_index.index)
        if self.backend == "hnsw":
            inner.hnsw.efSearch = settings.ef_search
        self._inner = inner  # keeps the inner index referenced as long as the wrapper
        self._lock = ReadWriteLock()

    def _new_storage(self) -> Any:
        import faiss

        if self.backend == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.spec.dimension, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self.settings.ef_construction
            return hnsw
        flat = faiss.IndexFlatIP(self.spec.dimension)
        return _to_gpu_storage(flat) if self.backend == "gpu-flat" else flat

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Add vectors under ``ids`` (default: the next positions), one short lock hold per slice."""
        vectors = self._check(vectors)
        if ids is None:
            ids = np.arange(self.ntotal, self.ntotal + len(vectors))
        id_array = np.ascontiguousarray(ids, dtype=np.int64)
        if len(id_array) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(id_array)} ids")
        for start in range(0, len(vectors), ADD_SLICE):
            with self._lock.write():
                self._index.add_with_ids(
                    vectors[start : start + ADD_SLICE], id_array[start : start + ADD_SLICE]
                )

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k scores and ids per query row; missing neighbours have id -1."""
        vectors = self._check(vectors)
        with self._lock.read():
            k = max(1, min(k, self.ntotal)) if self.ntotal else 1
            scores, ids = self._index.search(vectors, k)
        return scores, ids

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.spec.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.spec.dimension}), got {vectors.shape}")
        return vectors

    def manifest(self, applied_seq: int, file: str) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "file": file,
            "applied_seq": applied_seq,
            "encoder": self.spec.encoder,
            "dimension": self.spec.dimension,
            "metric": self.spec.metric,
            "normalized": self.spec.normalized,
            "quantization": self.spec.quantization,
            "encoder_backend": self.spec.encoder_backend,
            "index_type": INDEX_TYPES[self.backend],
            "backend": self.backend,
            "hnsw_m": self.settings.hnsw_m,
            "ef_construction": self.settings.ef_construction,
            "count": self.ntotal,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {
                p: _version(p) for p in ("faiss-cpu", "faiss-gpu", "sentence-transformers", "rag-service")
            },
        }

    def freeze(self, applied_seq: int) -> tuple[bytes, dict[str, Any]]:
        """The serialized graph and its manifest, as one consistent state (searches may go on)."""
        import faiss

        with self._lock.read():
            on_cpu = _to_cpu(self._index) if self.backend == "gpu-flat" else self._index
            data = bytes(faiss.serialize_index(on_cpu).tobytes())
            file = f"index-{applied_seq:012d}-{self.ntotal}.faiss"
            return data, self.manifest(applied_seq, file)

    def save(self, folder: Path, applied_seq: int) -> None:
        write_snapshot(folder, *self.freeze(applied_seq))

    @classmethod
    def load(cls, folder: Path, expected: IndexSpec, settings: IndexSettings) -> tuple[FaissIndex, int]:
        """The snapshot and the sequence number it holds everything up to."""
        import faiss

        manifest = read_manifest(folder)
        check_spec(manifest, expected, folder)
        backend = index_backend(settings.backend, faiss_gpus())
        if manifest.get("index_type") != INDEX_TYPES[backend]:
            # Another backend's snapshot (e.g. moved from a GPU machine): rebuilt from the database.
            raise IndexUnavailable(
                f"snapshot at {folder} is a {manifest.get('index_type')}, the configured backend "
                f"{backend!r} uses {INDEX_TYPES[backend]}"
            )
        path = folder / str(manifest.get("file", ""))
        if manifest.get("format") != FORMAT or not path.is_file():
            raise IndexUnavailable(f"snapshot at {folder} is missing or in an old format")
        faiss_index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
        if faiss_index.ntotal != manifest.get("count"):
            raise IndexUnavailable(
                f"index at {folder} holds {faiss_index.ntotal} vectors "
                f"but its manifest says {manifest.get('count')}"
            )
        return cls(expected, settings, faiss_index, backend), int(manifest["applied_seq"])


INDEX_TYPES: dict[IndexBackend, str] = {
    "hnsw": "IndexIDMap2(IndexHNSWFlat)",
    "flat": "IndexIDMap2(IndexFlatIP)",
    "gpu-flat": "IndexIDMap2(IndexFlatIP)",  # on the GPU while served; snapshots are the CPU form
}


def _to_gpu_storage(cpu_index: Any) -> Any:
    """``cpu_index`` cloned onto GPU 0; FAISS's cloner recurses through ``IndexIDMap2`` (ids kept)."""
    import faiss

    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, cpu_index)
    gpu.referenced_objects = [resources]  # type: ignore[attr-defined]  # must outlive the index
    return gpu


def _to_gpu(cpu_index: Any) -> Any:
    return _to_gpu_storage(cpu_index)


def _to_cpu(gpu_index: Any) -> Any:
    import faiss

    return faiss.index_gpu_to_cpu(gpu_index)
