"""The searchable index of a folder: a FAISS HNSW graph derived from the document store.

Layout of an index folder (see indexes/README.md):
- ``documents.sqlite3``: the source of truth (``store.py``);
- ``index-<seq>.faiss`` + ``manifest.json``: a snapshot of the HNSW graph holding every chunk
  committed up to sequence ``<seq>``. The manifest names the snapshot file, the encoder, dimension,
  metric, normalization, library versions and that sequence number; it is written last (temp file,
  fsync, rename), so it always points at a complete file.

On open, the snapshot is loaded and the rows committed after it are replayed; a missing, corrupt or
foreign snapshot is rebuilt from the stored embeddings (no re-encoding). A store or snapshot whose
encoder, dimension, metric or normalization differ from the configured encoder is refused (version
skew): its vectors would be meaningless to the queries.

Deletes: HNSW cannot remove vectors. A replaced or deleted chunk is dropped from the passage map
(a tombstone) and filtered out of results, with enough extra candidates fetched that top_k stays full.
When tombstones pass a share of the graph, a background thread builds a fresh graph from the stored
embeddings and swaps it in with one reference assignment while searches go on.

Concurrency (FAISS allows concurrent searches, but not an add during a search): a readers-writer
lock. Searches share it; adds take it alone in slices of ``ADD_SLICE`` vectors, so a search waits at
most one slice (a few ms). Adding to a copy and swapping it in instead would copy the whole graph for
every batch (O(index size) memory and time per write); the lock costs a search at most one slice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.config import IndexSettings
from rag_service.errors import IndexUnavailable
from rag_service.hardware import IndexBackend, faiss_gpus, index_backend
from rag_service.store import STORE_FILE, DocumentStore
from rag_service.types import Hit, Passage

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
METRIC = "inner_product"
FORMAT = 2  # 1 = the JSON Lines store without a database (before ingestion)
ADD_SLICE = 16  # vectors added per write-lock hold: bounds how long a search can wait
STALE_FILE_S = 600  # an unnamed snapshot file this old is a crash's leftover, not a write in progress


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """What the vectors are: anything that differs between index and encoder is version skew."""

    encoder: str
    dimension: int
    metric: str = METRIC
    normalized: bool = True

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> IndexSpec:
        normalized = meta.get("normalized", False)
        return cls(
            encoder=str(meta.get("encoder", "?")),
            dimension=int(meta.get("dimension", -1)),
            metric=str(meta.get("metric", "?")),
            normalized=normalized in (True, "True", "true", "1"),
        )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync it, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
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


class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers, so adds are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class HnswIndex:
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

    def ids(self) -> np.ndarray:
        """Every vector id in the graph (a test checks none is there twice)."""
        import faiss

        with self._lock.read():
            return faiss.vector_to_array(self._index.id_map).copy()

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
    def load(cls, folder: Path, expected: IndexSpec, settings: IndexSettings) -> tuple[HnswIndex, int]:
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


def write_snapshot(folder: Path, data: bytes, manifest: dict[str, Any]) -> None:
    """``index-<seq>-<count>.faiss`` then the manifest naming it, each atomically; then the previous
    snapshot file goes. A crash at any point leaves the manifest naming a complete file."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = _manifest_or_none(folder)
    file = str(manifest["file"])
    write_atomically(folder / file, data)
    write_atomically(folder / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    if previous and previous.get("file") not in (None, file):
        (folder / str(previous["file"])).unlink(missing_ok=True)
    # Leftovers of a process killed mid-snapshot: a file the manifest never named, a temp file.
    stale = time.time() - STALE_FILE_S
    for path in [*folder.glob("index-*.faiss"), *folder.glob(".index-*.tmp")]:
        if path.name != file and path.stat().st_mtime < stale:
            path.unlink(missing_ok=True)


def _manifest_or_none(folder: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(folder)
    except (IndexUnavailable, ValueError):
        return None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IndexUnavailable(
            f"no index at {folder} (missing {MANIFEST_FILE}); build it with `rag-service build-index`"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def check_spec(meta: dict[str, Any], expected: IndexSpec, where: Path) -> None:
    """Refuse vectors that came from another encoder, dimension, metric or normalization."""
    found = IndexSpec.from_meta(meta)
    if found != expected:
        raise IndexUnavailable(
            f"index at {where} was built with encoder {found.encoder!r} (dimension {found.dimension}, "
            f"{found.metric}, normalized={found.normalized}) but the service is configured with encoder "
            f"{expected.encoder!r} (dimension {expected.dimension}, {expected.metric}, "
            f"normalized={expected.normalized}); run `rag-service reindex` to re-embed the stored "
            "documents with the configured encoder",
            code="index_encoder_mismatch",
        )


def index_state(folder: Path) -> str:
    """``ready`` (a document store), ``absent``, ``old`` (format 1: no database) or ``incomplete``."""
    if DocumentStore.exists(folder):
        return "ready"
    if (folder / MANIFEST_FILE).is_file() and not (folder / STORE_FILE).exists():
        return "old"
    if not folder.exists() or not any(folder.iterdir()):
        return "absent"
    return "incomplete"


def open_store(folder: Path, expected: IndexSpec | None) -> DocumentStore:
    """The folder's store, refused with a message that says what to run when it cannot serve."""
    state = index_state(folder)
    if state != "ready":
        what = {
            "absent": "no index",
            "old": "an index in the old format (no documents database)",
            "incomplete": "an incomplete index (no committed documents database)",
        }[state]
        raise IndexUnavailable(f"{folder} holds {what}; run `rag-service build-index` to build it")
    store = DocumentStore.open(folder)
    if expected is not None:
        try:
            check_spec(store.meta(), expected, folder)
        except IndexUnavailable:
            store.close()
            raise
    return store


class LiveIndex:
    """The HNSW graph plus the live passages by vector id, kept up to date with the store.

    ``catch_up`` applies every row committed after ``applied_seq`` (by this process or another);
    it is the one write path into the graph, so startup replay and live ingestion are the same code.
    """

    def __init__(
        self,
        folder: Path,
        store: DocumentStore,
        graph: HnswIndex,
        passages: dict[int, Passage],
        applied_seq: int,
        snapshot_seq: int,
    ) -> None:
        self.folder = folder
        self.store = store
        self.spec = graph.spec
        self.settings = graph.settings
        self._graph = graph
        self._passages = passages
        self.applied_seq = applied_seq
        self.snapshot_seq = snapshot_seq
        self._added_since_snapshot = 0
        self._apply_lock = threading.Lock()  # one catch-up / swap at a time
        self._snapshot_lock = threading.Lock()
        self._rebuild: threading.Thread | None = None
        self.rebuilds = 0
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path, spec: IndexSpec, settings: IndexSettings) -> LiveIndex:
        store = open_store(folder, spec)
        try:
            graph, snapshot_seq = HnswIndex.load(folder, spec, settings)
            if snapshot_seq > store.last_seq():
                raise IndexUnavailable(f"snapshot at {folder} is newer than its database")
        except IndexUnavailable as exc:
            # The database (checked above) is the truth; a missing or foreign snapshot is rebuilt.
            if (folder / MANIFEST_FILE).exists():
                log.warning("%s: rebuilding the HNSW graph from the stored embeddings", exc.message)
            graph, snapshot_seq = HnswIndex(spec, settings), 0
        except Exception as exc:  # a corrupt snapshot file: the database still has everything
            log.warning("snapshot at %s unreadable (%s): rebuilding it from the database", folder, exc)
            graph, snapshot_seq = HnswIndex(spec, settings), 0
        changes = store.changes_since(snapshot_seq, all_live=True)
        if len(changes.added):
            graph.add(changes.embeddings, [vid for vid, _ in changes.added])
        passages = dict(changes.kept)
        passages.update(changes.added)
        live = cls(folder, store, graph, passages, changes.last_seq, snapshot_seq)
        log.info(
            "index %s: %d live passages, snapshot at seq %d, replayed %d new passages up to seq %d",
            folder,
            len(passages),
            snapshot_seq,
            len(changes.added),
            changes.last_seq,
        )
        if changes.added or snapshot_seq == 0:
            live.snapshot()
        return live

    # --- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._passages)

    @property
    def ntotal(self) -> int:
        return self._graph.ntotal

    @property
    def tombstones(self) -> int:
        return max(0, self._graph.ntotal - len(self._passages))

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The top ``k`` live passages. Tombstoned vectors are skipped; the search widens until ``k``
        live hits are found or the whole graph was asked."""
        graph = self._graph  # a rebuild may swap it; this search finishes on the one it started with
        n = graph.ntotal
        if n == 0 or k < 1:
            return []
        fetch = min(n, k + min(self.tombstones, max(k, 32)))
        while True:
            scores, ids = graph.search(vector.reshape(1, -1), fetch)
            hits: list[Hit] = []
            seen: set[int] = set()
            for score, vid in zip(scores[0], ids[0], strict=True):
                passage = self._passages.get(int(vid))
                if passage is not None and int(vid) not in seen:
                    seen.add(int(vid))
                    hits.append(Hit(passage, float(score)))
                    if len(hits) == k:
                        return hits
            if fetch >= n:
                return hits
            fetch = min(n, fetch * 4)

    def passage(self, vector_id: int) -> Passage | None:
        """The live passage of a vector id; None if deleted, replaced or not applied here yet."""
        return self._passages.get(vector_id)

    def vector_ids(self) -> np.ndarray:
        return self._graph.ids()

    def live_ids(self) -> set[int]:
        return set(self._passages)

    def stats(self) -> dict[str, Any]:
        stored = self.store.stats()
        return {
            **stored,
            "passages": len(self._passages),
            "vectors": self.ntotal,
            "tombstones": self.tombstones,
            "applied_seq": self.applied_seq,
            "snapshot_seq": self.snapshot_seq,
            "rebuilding": self._rebuild is not None and self._rebuild.is_alive(),
            "rebuilds": self.rebuilds,
            "encoder": self.spec.encoder,
            "dimension": self.spec.dimension,
        }

    # --- keeping up with the store -------------------------------------------------------------

    def catch_up(self) -> int:
        """Apply rows committed after ``applied_seq``; returns how many chunks changed."""
        with self._apply_lock:
            changes = self.store.changes_since(self.applied_seq)
            if changes.last_seq == self.applied_seq:
                return 0
            if changes.added:
                self._graph.add(changes.embeddings, [vid for vid, _ in changes.added])
                self._passages.update(changes.added)  # visible only once its vector is in the graph
            for vid in changes.removed:
                self._passages.pop(vid, None)
            self.applied_seq = changes.last_seq
            self._added_since_snapshot += len(changes.added)
            due = self._added_since_snapshot >= self.settings.snapshot_every
        if due:
            self.snapshot()
        self._maybe_rebuild()
        return len(changes.added) + len(changes.removed)

    def snapshot(self) -> None:
        """Write the graph and the sequence it holds everything up to. Serializing holds the apply
        lock (no vector may slip in after the recorded sequence) but only the graph's read lock, so
        searches go on; the file is written after both are released."""
        with self._snapshot_lock:
            with self._apply_lock:
                seq = self.applied_seq
                data, manifest = self._graph.freeze(seq)
                self._added_since_snapshot = 0
            write_snapshot(self.folder, data, manifest)
            self.snapshot_seq = seq

    def _maybe_rebuild(self) -> None:
        s = self.settings
        tomb = self.tombstones
        if tomb >= s.rebuild_min_tombstones and tomb >= s.rebuild_tombstone_ratio * max(self.ntotal, 1):
            self.start_rebuild()

    def start_rebuild(self) -> threading.Thread:
        """Build a graph of the live vectors in the background and swap it in (searches continue)."""
        with self._apply_lock:
            if self._rebuild is not None and self._rebuild.is_alive():
                return self._rebuild
            self._rebuild = threading.Thread(target=self._rebuild_now, name="index-rebuild", daemon=True)
            self._rebuild.start()
            return self._rebuild

    def _rebuild_now(self) -> None:
        from rag_service.ingest import lower_priority

        lower_priority()  # background work: queries keep the CPU
        started = time.perf_counter()
        try:
            with self._apply_lock:
                ids = list(self._passages)
            fresh = HnswIndex(self.spec, self.settings)
            for start in range(0, len(ids), 1024):
                self._add_live(fresh, ids[start : start + 1024])
            with self._apply_lock:
                # Chunks applied while we built: add them too. Ones deleted meanwhile are filtered.
                listed = set(ids)
                self._add_live(fresh, [vid for vid in self._passages if vid not in listed])
                old = self._graph
                self._graph = fresh  # one reference assignment: the swap
                self.rebuilds += 1
            log.info(
                "rebuilt the index in %.1f s: %d vectors -> %d (tombstones dropped)",
                time.perf_counter() - started,
                old.ntotal,
                fresh.ntotal,
            )
            self.snapshot()
        except Exception:
            log.exception("index rebuild failed; the current graph stays in service")

    def _add_live(self, graph: HnswIndex, vector_ids: list[int]) -> None:
        """Add the stored vectors of these chunks, less any tombstoned since they were listed (in the
        database already, maybe not yet here: ``catch_up`` drops their passages)."""
        live, vectors = self.store.live_embeddings(vector_ids)
        if live:
            graph.add(vectors, live)

    def start_refresh(self, interval_s: float) -> None:
        """Pick up rows another process (``rag-service ingest``) commits to this folder."""
        if interval_s <= 0 or self._refresher is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    if self.store.last_seq() > self.applied_seq:
                        self.catch_up()
                except Exception:
                    log.exception("index refresh failed")

        self._refresher = threading.Thread(target=loop, name="index-refresh", daemon=True)
        self._refresher.start()

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        if self._rebuild is not None:
            self._rebuild.join(timeout=60)
        if self.applied_seq != self.snapshot_seq:
            self.snapshot()
        self.store.close()
