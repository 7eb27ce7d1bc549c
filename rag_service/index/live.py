"""The live index: the FAISS index plus the live passages by vector id, kept up to date with the store.

On open, the snapshot is loaded and the rows committed after it are replayed; a missing, corrupt or
foreign snapshot is rebuilt from the stored embeddings (no re-encoding).

Deletes: HNSW cannot remove vectors. A replaced or deleted chunk is dropped from the passage map
(a tombstone) and filtered out of results, with enough extra candidates fetched that top_k stays full.
When tombstones pass a share of the graph, a background thread (at the ingestion niceness,
``RAG_INGEST__NICE``) builds a fresh graph from the stored embeddings and swaps it in with one
reference assignment while searches go on.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.config import IndexSettings
from rag_service.domain import Hit, Passage
from rag_service.errors import IndexUnavailable
from rag_service.index.faiss_index import FaissIndex
from rag_service.index.snapshot import MANIFEST_FILE, IndexSpec, open_store, write_snapshot
from rag_service.runtime.priority import lower_priority
from rag_service.storage.store import DocumentStore

log = logging.getLogger(__name__)


class LiveIndex:
    """The HNSW graph plus the live passages by vector id, kept up to date with the store.

    ``catch_up`` applies every row committed after ``applied_seq`` (by this process or another);
    it is the one write path into the graph, so startup replay and live ingestion are the same code.
    """

    def __init__(
        self,
        folder: Path,
        store: DocumentStore,
        graph: FaissIndex,
        passages: dict[int, Passage],
        applied_seq: int,
        snapshot_seq: int,
        *,
        background_nice: int = 10,
    ) -> None:
        self.folder = folder
        self.background_nice = background_nice  # niceness of the rebuild thread (RAG_INGEST__NICE)
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
    def open(
        cls, folder: Path, spec: IndexSpec, settings: IndexSettings, *, background_nice: int = 10
    ) -> LiveIndex:
        store = open_store(folder, spec)
        try:
            graph, snapshot_seq = FaissIndex.load(folder, spec, settings)
            if snapshot_seq > store.last_seq():
                raise IndexUnavailable(f"snapshot at {folder} is newer than its database")
        except IndexUnavailable as exc:
            # The database (checked above) is the truth; a missing or foreign snapshot is rebuilt.
            if (folder / MANIFEST_FILE).exists():
                log.warning("%s: rebuilding the HNSW graph from the stored embeddings", exc.message)
            graph, snapshot_seq = FaissIndex(spec, settings), 0
        except Exception as exc:  # a corrupt snapshot file: the database still has everything
            log.warning("snapshot at %s unreadable (%s): rebuilding it from the database", folder, exc)
            graph, snapshot_seq = FaissIndex(spec, settings), 0
        changes = store.changes_since(snapshot_seq, all_live=True)
        if len(changes.added):
            graph.add(changes.embeddings, [vid for vid, _ in changes.added])
        passages = dict(changes.kept)
        passages.update(changes.added)
        live = cls(
            folder, store, graph, passages, changes.last_seq, snapshot_seq, background_nice=background_nice
        )
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

    def frozen(self) -> tuple[bytes, dict[str, Any]]:
        """The graph and its manifest as of ``applied_seq``, in memory (a replica's bundle, bundle.py)."""
        with self._apply_lock:
            return self._graph.freeze(self.applied_seq)

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
        lower_priority(self.background_nice)  # background work (RAG_INGEST__NICE): queries keep the CPU
        started = time.perf_counter()
        try:
            with self._apply_lock:
                ids = list(self._passages)
            fresh = FaissIndex(self.spec, self.settings)
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

    def _add_live(self, graph: FaissIndex, vector_ids: list[int]) -> None:
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
