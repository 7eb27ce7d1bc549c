"""Ingestion throughput and query latency during ingestion, on SciFact's 5,183 abstracts.

    .venv/bin/python benchmarks/ingest.py [--data ../shared/data/scifact] [--docs N] [--nice 10]

In one process, on the same texts and the same torch threads, a background thread at the ingestion
niceness (as the server's ingestion thread runs) takes the corpus batch by batch and, for each batch,
runs plain ``SentenceTransformer.encode`` on its ``title\\ntext`` texts (the library alone, truncated
at 256 tokens) and then our ingestion of the same documents (chunking into 200-token windows,
encoding, one SQLite transaction, HNSW add, snapshots). Meanwhile the main thread asks one query
at a time (encode + search, k=10), as a user would, in windows that alternate between ingestion
running and ingestion paused (idle), so both see the same drifting background load.
It prints docs/s (ours and plain, and their ratio) and query p50/p95/p99 during ingestion vs idle,
and writes benchmarks/results/ingest.json. The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rag_service.config import IngestSettings, Settings
from rag_service.embedding.encoder import Encoder, resolve_encoder_path
from rag_service.index.live import LiveIndex
from rag_service.ingestion.corpus import read_jsonl
from rag_service.ingestion.ingestor import Ingestor, batches, chunker_for, embedding_text, open_or_create
from rag_service.runtime.priority import lower_priority

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUERY_PAUSE_S = 0.05  # between two queries: one user asking, not a flood


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    a = np.asarray(samples_ms)
    return {
        "n": len(samples_ms),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


class QueryLoop:
    """Asks queries one at a time; records embed+search and search-only latency (ms)."""

    def __init__(self, encoder: Encoder, live: LiveIndex, queries: list[str]) -> None:
        self.encoder, self.live, self.queries = encoder, live, queries
        self.total_ms: list[float] = []
        self.search_ms: list[float] = []

    def ask(self, i: int) -> None:
        started = time.perf_counter()
        vector = self.encoder.encode_queries([self.queries[i % len(self.queries)]])[0]
        searched = time.perf_counter()
        self.live.search(vector, 10)
        done = time.perf_counter()
        self.total_ms.append((done - started) * 1000)
        self.search_ms.append((done - searched) * 1000)


def _window(
    loop: QueryLoop, into: tuple[list[float], list[float]], seconds: float, done: threading.Event
) -> None:
    """Ask queries for ``seconds`` (or until ``done``), appending latencies to ``into``."""
    loop.total_ms.clear()
    loop.search_ms.clear()
    end = time.monotonic() + seconds
    i = len(into[0])
    while time.monotonic() < end and not done.is_set():
        loop.ask(i)
        i += 1
        time.sleep(QUERY_PAUSE_S)
    into[0].extend(loop.total_ms)
    into[1].extend(loop.search_ms)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--docs", type=int, default=0, help="only the first N abstracts (smoke runs)")
    parser.add_argument("--batch", type=int, default=IngestSettings().batch_docs, help="docs per batch")
    parser.add_argument("--nice", type=int, default=IngestSettings().nice, help="ingestion niceness")
    parser.add_argument("--idle-queries", type=int, default=100, help="fewest idle queries measured")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per query window")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"no SciFact data at {args.data}: nothing to measure", file=sys.stderr)
        return 2

    import torch
    from sentence_transformers import SentenceTransformer

    settings = Settings()
    docs = list(read_jsonl(args.data / "corpus.jsonl"))
    if args.docs:
        docs = docs[: args.docs]
    queries = [
        json.loads(line)["text"] for line in (args.data / "queries.jsonl").read_text().splitlines() if line
    ]
    encoder = Encoder(settings.encoder)
    threads = torch.get_num_threads()

    # The ingestion thread runs, batch by batch, plain SentenceTransformer.encode on the batch's texts
    # (whole abstracts, truncated at 256 tokens) and then our ingestion of the same documents, both at
    # the ingestion niceness: the shared machine's load drifts, so the two are compared batch by batch.
    plain = SentenceTransformer(resolve_encoder_path(settings.encoder.model), device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="rag-ingest-bench-")) / "idx"
    live = open_or_create(folder, encoder, settings)
    ingest_encoder = Encoder(settings.encoder)  # the server's ingestion thread has its own, too
    ingestor = Ingestor(live, ingest_encoder, chunker_for(ingest_encoder, settings))
    loop = QueryLoop(encoder, live, queries)
    loop.ask(0)  # warm the query path (first-call allocations) before measuring
    report: dict[str, Any] = {"docs": 0, "chunks": 0, "seconds": 0.0, "plain_s": 0.0}
    gate, busy, done = threading.Event(), threading.Event(), threading.Event()

    def ingest() -> None:
        lower_priority(args.nice)
        try:
            with tqdm(total=len(docs), desc="ingesting", unit="doc") as bar:
                for batch in batches(docs, args.batch):
                    gate.wait()
                    busy.set()
                    started = time.perf_counter()
                    plain.encode([embedding_text(d.title, d.text) for d in batch], batch_size=64)
                    plain_done = time.perf_counter()
                    result = ingestor.upsert(batch)
                    report["seconds"] += time.perf_counter() - plain_done
                    report["plain_s"] += plain_done - started
                    report["docs"] += len(batch)
                    report["chunks"] += result.chunks
                    busy.clear()
                    bar.update(len(batch))
        finally:
            done.set()

    # Query windows alternate: ingestion running / ingestion paused (after its batch ends), so both
    # sides of the latency comparison see the same drifting background load.
    print(f"ingesting {len(docs)} abstracts at nice {args.nice}, {threads} torch threads", flush=True)
    worker = threading.Thread(target=ingest, name="ingest")
    worker.start()
    during: tuple[list[float], list[float]] = ([], [])
    idle: tuple[list[float], list[float]] = ([], [])
    while not done.is_set():
        gate.set()
        _window(loop, during, args.window, done)
        gate.clear()
        while busy.is_set():
            time.sleep(0.01)
        _window(loop, idle, args.window, done)
    gate.set()
    worker.join()
    while len(idle[0]) < args.idle_queries:  # top up idle samples on the full index
        _window(loop, idle, args.window, threading.Event())
    live.close()
    shutil.rmtree(folder.parent, ignore_errors=True)

    ours = report["docs"] / report["seconds"]
    plain_s = report["plain_s"]
    plain_rate = report["docs"] / plain_s
    result = {
        "dataset": str(args.data),
        "docs": report["docs"],
        "chunks": report["chunks"],
        "batch_docs": args.batch,
        "nice": args.nice,
        "torch_threads": threads,
        "load_average_1_5_15": [round(x, 1) for x in os.getloadavg()],  # the machine is shared
        "ingest_s": round(report["seconds"], 1),
        "ingest_docs_per_s": round(ours, 2),
        "plain_encode_s": round(plain_s, 1),
        "plain_docs_per_s": round(plain_rate, 2),
        "ratio_ours_to_plain": round(ours / plain_rate, 3),
        "query_ms_idle": percentiles(idle[0]),
        "query_ms_during_ingestion": percentiles(during[0]),
        "search_ms_idle": percentiles(idle[1]),
        "search_ms_during_ingestion": percentiles(during[1]),
    }
    print(f"\nSciFact: {result['docs']} abstracts -> {result['chunks']} chunks, {threads} torch threads")
    print(f"{'':<34} {'docs/s':>8} {'seconds':>8}")
    print(f"{'plain SentenceTransformer.encode':<34} {plain_rate:>8.2f} {plain_s:>8.1f}")
    print(
        f"{'rag-service ingestion (nice ' + str(args.nice) + ')':<34} {ours:>8.2f} {report['seconds']:>8.1f}"
    )
    print(f"ratio ours / plain: {result['ratio_ours_to_plain']:.3f}")
    print(f"load average at the end (1/5/15 min): {result['load_average_1_5_15']}")
    print(f"\n{'query ms (encode + search, k=10)':<34} {'n':>5} {'p50':>7} {'p95':>7} {'p99':>7}")
    for name, key in (("idle", "query_ms_idle"), ("during ingestion", "query_ms_during_ingestion")):
        p = result[key]
        print(f"{name:<34} {p['n']:>5} {p.get('p50', 0):>7} {p.get('p95', 0):>7} {p.get('p99', 0):>7}")
    for name, key in (
        ("search only, idle", "search_ms_idle"),
        ("search only, during", "search_ms_during_ingestion"),
    ):
        p = result[key]
        print(f"{name:<34} {p['n']:>5} {p.get('p50', 0):>7} {p.get('p95', 0):>7} {p.get('p99', 0):>7}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ingest.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
