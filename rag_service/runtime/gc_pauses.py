"""Python's garbage collector as a source of tail latency: measured, and kept off the serving path.

A full (generation 2) collection walks every object the process tracks, holding the GIL: with torch,
transformers, FAISS and vLLM loaded that is over half a million objects and about 300-400 ms on this
CPU, during which every request in flight waits (it showed up as searches whose 2 ms of work took
400 ms and failed their 50 ms retrieve budget). Almost all of those objects are allocated at start-up
and live as long as the process, so after warm-up ``freeze`` moves them into the permanent generation
that collections skip (``gc.freeze``, added to Python for exactly this); a later collection walks
only what requests allocate; ``thaw`` hands them back at shutdown (native extensions such as
triton's check at exit that their objects were freed, and print "leaked" warnings about frozen
ones). ``GcPauseWatch`` times every collection into
``rag_gc_pause_seconds{generation}`` and logs a long one, so a regression is visible.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger(__name__)

LONG_PAUSE_S = 0.05  # a collection longer than this is logged: it is a visible share of a budget


class GcPauseWatch:
    """Times each garbage collection (``gc.callbacks``) into ``histogram``, labelled by generation."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        self.histogram.labels(str(info["generation"])).observe(seconds)
        if seconds > LONG_PAUSE_S:
            log.warning(
                "garbage collection of generation %s paused the process for %.0f ms",
                info["generation"],
                seconds * 1000,
            )

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def freeze() -> int:
    """Collect once, then exempt every surviving object from later collections; returns how many."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "froze %d start-up objects out of garbage collection (%.0f ms)",
        frozen,
        (time.perf_counter() - started) * 1000,
    )
    return frozen


def thaw() -> None:
    """Undo ``freeze`` at shutdown and free what the service let go of now, while every module is
    still there for the objects' finalizers."""
    gc.unfreeze()
    gc.collect()
