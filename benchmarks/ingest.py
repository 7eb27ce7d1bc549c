"""Ingestion throughput and query latency during ingestion, on SciFact's 5,183 abstracts.

    .venv/bin/python benchmarks/ingest.py [--data ../shared/data/scifact] [--docs N] [--nice 10]

Three phases in one process, on the same texts and the same torch threads:
1. plain ``SentenceTransformer.encode`` of every ``title\\ntext`` (the library alone, batch 64);
2. our ingestion (chunking, encoding, one SQLite transaction per batch, HNSW add, snapshots) into a
   fresh index folder, on a background thread at the configured niceness, exactly as the server's
   ingestion thread runs, while the main thread asks one query at a time (encode + search), as a
   user would;
3. the same queries with nothing else running (idle).
It prints docs/s (ours and plain, and their ratio) and query p50/p95/p99 during ingestion vs idle,
and writes benchmarks/results/ingest.json. The machine is shared: compare ratios within one run.
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

from rag_service.config import IngestSettings, Settings
from rag_service.corpus import read_jsonl
from rag_service.encoder import Encoder, resolve_encoder_path
from rag_service.index import LiveIndex
from rag_service.ingest import (
    Ingestor,
    chunker_for,
    embedding_text,
    ingest_documents,
    lower_priority,
    open_or_create,
)

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

    def run_until(self, stop: threading.Event, limit: int = 0) -> None:
        i = 0
        while not stop.is_set() and (not limit or i < limit):
            self.ask(i)
            i += 1
            time.sleep(QUERY_PAUSE_S)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--docs", type=int, default=0, help="only the first N abstracts (smoke runs)")
    parser.add_argument("--batch", type=int, default=IngestSettings().batch_docs, help="docs per batch")
    parser.add_argument("--nice", type=int, default=IngestSettings().nice, help="ingestion niceness")
    parser.add_argument("--idle-queries", type=int, default=300, help="queries in the idle phase")
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

    # 1. The plain library on the same texts (whole abstracts, truncated at 256 tokens by the model).
    plain = SentenceTransformer(resolve_encoder_path(settings.encoder.model), device="cpu")
    texts = [embedding_text(d.title, d.text) for d in docs]
    print(f"plain SentenceTransformer.encode: {len(texts)} abstracts, {threads} torch threads", flush=True)
    started = time.perf_counter()
    plain.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=True)
    plain_s = time.perf_counter() - started
    del plain

    # 2. Our ingestion on a niced background thread while queries run.
    folder = Path(tempfile.mkdtemp(prefix="rag-ingest-bench-")) / "idx"
    live = open_or_create(folder, encoder, settings)
    ingest_encoder = Encoder(settings.encoder)  # the server's ingestion thread has its own, too
    ingestor = Ingestor(live, ingest_encoder, chunker_for(ingest_encoder, settings))
    loop = QueryLoop(encoder, live, queries)
    loop.ask(0)  # warm the query path (first-call allocations) before measuring
    loop.total_ms.clear()
    loop.search_ms.clear()
    report: dict[str, Any] = {}
    stop = threading.Event()

    def ingest() -> None:
        lower_priority(args.nice)
        try:
            r = ingest_documents(ingestor, docs, args.batch)
            report.update(docs=r.documents, chunks=r.chunks, seconds=r.seconds)
        finally:
            stop.set()

    print(f"ingesting {len(docs)} abstracts at nice {args.nice} while querying", flush=True)
    worker = threading.Thread(target=ingest, name="ingest")
    worker.start()
    loop.run_until(stop)
    worker.join()
    during = (list(loop.total_ms), list(loop.search_ms))

    # 3. Idle: the same query loop with nothing else running, on the full index.
    loop.total_ms.clear()
    loop.search_ms.clear()
    loop.run_until(threading.Event(), limit=args.idle_queries)
    idle = (loop.total_ms, loop.search_ms)
    live.close()
    shutil.rmtree(folder.parent, ignore_errors=True)

    ours = report["docs"] / report["seconds"]
    plain_rate = len(docs) / plain_s
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
