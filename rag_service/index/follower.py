"""A replica's index: a private copy of the writer's index, kept up to date by pulling its changes.

Started from a snapshot bundle (``bundle.py``), then every ``refresh_s`` (``RAG_INDEX__REFRESH_S``) it
asks the writer for the rows committed after its ``applied_seq`` (``replication.export_changes``),
applies them to its copy of the store and lets the live index catch up from it. ``wait_for(seq)``
pulls at once: a replica that took a write, or a request that names the sequence number it must
see (``X-Rag-Min-Seq``, read-your-writes), does not wait for the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol

from rag_service.config import IndexSettings
from rag_service.index.bundle import unpack_bundle
from rag_service.index.live import LiveIndex
from rag_service.index.snapshot import IndexSpec
from rag_service.storage.replication import ChangeBatch, apply_changes

log = logging.getLogger(__name__)


class ChangeSource(Protocol):
    """The writer, as a replica sees it (in process in tests, a Ray Serve handle in a cluster)."""

    def bundle(self) -> bytes: ...

    def changes_since(self, seq: int) -> ChangeBatch: ...


class Follower:
    def __init__(self, live: LiveIndex, source: ChangeSource) -> None:
        self.live = live
        self.source = source
        self._pull_lock = threading.Lock()  # one pull at a time; a second caller waits for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pulls = 0
        self.last_pull_error: str | None = None

    @classmethod
    def start(
        cls, folder: Path, spec: IndexSpec, settings: IndexSettings, source: ChangeSource, *, nice: int = 10
    ) -> Follower:
        """Unpack the writer's current bundle into ``folder``, open it, catch up, follow."""
        started = time.perf_counter()
        unpack_bundle(source.bundle(), folder)
        live = LiveIndex.open(folder, spec, settings, background_nice=nice)
        follower = cls(live, source)
        follower.pull()
        log.info(
            "replica index at %s: %d passages at seq %d, from the writer's bundle in %.1f s",
            folder,
            len(live),
            live.applied_seq,
            time.perf_counter() - started,
        )
        follower.follow(settings.refresh_s)
        return follower

    @property
    def applied_seq(self) -> int:
        return self.live.applied_seq

    def pull(self) -> int:
        """Apply every change the writer has after ``applied_seq``; returns the new ``applied_seq``."""
        with self._pull_lock:
            while True:
                batch = self.source.changes_since(self.live.store.last_seq())
                if batch.last_seq > batch.since:
                    apply_changes(self.live.store, batch)
                self.pulls += 1
                if not batch.more:
                    break
            self.live.catch_up()
            return self.live.applied_seq

    def wait_for(self, seq: int, timeout_s: float) -> bool:
        """True once ``applied_seq >= seq``: pulls at once, then again until ``timeout_s`` is spent."""
        deadline = time.monotonic() + timeout_s
        while self.live.applied_seq < seq:
            self.pull()
            if self.live.applied_seq >= seq or time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.live.applied_seq >= seq

    def follow(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.pull()
                    self.last_pull_error = None
                except Exception as exc:  # the writer restarting: keep serving what we have, retry
                    self.last_pull_error = f"{type(exc).__name__}: {exc}"
                    log.warning("replica could not pull the writer's changes: %s", self.last_pull_error)

        self._thread = threading.Thread(target=loop, name="index-follow", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, object]:
        return {"pulls": self.pulls, "last_pull_error": self.last_pull_error}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.live.close()
