"""Garbage-collection pauses: timed by the real collector's callbacks, and kept off the serving path."""

from __future__ import annotations

import gc
import re

import httpx
from prometheus_client import CollectorRegistry, Histogram

from rag_service.runtime.gc_pauses import GcPauseWatch
from tests.support.server import LiveServer


def test_every_collection_is_timed_by_generation() -> None:
    histogram = Histogram("gc_pause_seconds", "test", ["generation"], registry=CollectorRegistry())
    watch = GcPauseWatch(histogram)
    watch.start()
    watch.start()  # twice is once
    assert gc.callbacks.count(watch) == 1
    try:
        gc.collect()  # a full collection: generation 2
        counted = _counts(histogram)
    finally:
        watch.stop()
    assert counted.get("2", 0) >= 1, counted
    gc.collect()  # not timed any more
    assert _counts(histogram) == counted and watch not in gc.callbacks


def _counts(histogram: Histogram) -> dict[str, float]:
    return {
        s.labels["generation"]: s.value
        for metric in histogram.collect()
        for s in metric.samples
        if s.name.endswith("_count")
    }


def test_the_ready_server_froze_its_start_up_objects(live_server: LiveServer) -> None:
    # After warm-up the models' and libraries' objects are out of every later collection: hundreds
    # of thousands of them (a full collection over them paused the server for ~400 ms).
    metrics = httpx.get(f"{live_server.url}/metrics", timeout=30).text
    frozen = re.search(r"^rag_gc_frozen_objects ([0-9.e+]+)$", metrics, re.M)
    assert frozen is not None and float(frozen.group(1)) > 100_000
    assert "rag_gc_pause_seconds_bucket" in metrics
