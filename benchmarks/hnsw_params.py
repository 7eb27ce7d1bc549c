"""HNSW parameters on SciFact: recall@10 against exact search, nDCG@10, query latency, build time.

The measurement behind the index defaults (M=32, efConstruction=200, efSearch=64).

    .venv/bin/python benchmarks/hnsw_params.py [--data ../shared/data/scifact]

Prints a table and writes benchmarks/results/hnsw_params.json. Encoding the 5,183 abstracts takes
about 3-4 minutes on 2 cores; the vectors are cached in benchmarks/results/ for later runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from rag_service.config import Settings
from rag_service.corpus import read_jsonl
from rag_service.encoder import Encoder

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GRID = [(32, 40, 16), (32, 200, 16), (32, 200, 32), (32, 200, 64), (32, 200, 128)]


def ndcg_at_10(
    run: np.ndarray, doc_ids: list[str], query_ids: list[str], qrels: dict[str, set[str]]
) -> float:
    total = 0.0
    for row, qid in zip(run, query_ids, strict=True):
        relevant = qrels.get(qid, set())
        dcg = sum(
            1 / math.log2(rank + 2) for rank, j in enumerate(row[:10]) if j >= 0 and doc_ids[j] in relevant
        )
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(10, len(relevant))))
        total += dcg / ideal if ideal else 0.0
    return total / len(query_ids)


def main() -> int:
    import faiss

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--docs", type=int, default=0, help="use only the first N abstracts (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and the vector cache")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        print(f"no SciFact data at {args.data}: nothing to measure", file=sys.stderr)
        return 2

    encoder = Encoder(Settings().encoder)
    docs = list(read_jsonl(args.data / "corpus.jsonl"))
    if args.docs:
        docs = docs[: args.docs]
    doc_ids = [d.id for d in docs]
    queries = [json.loads(line) for line in (args.data / "queries.jsonl").read_text().splitlines() if line]
    qrels: dict[str, set[str]] = {}
    for line in (args.data / "qrels.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, set()).add(did)

    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / f"scifact-{len(docs)}-vectors.npy"
    if cache.is_file():
        doc_vectors = np.load(cache)
    else:
        print(f"encoding {len(docs)} abstracts (cached afterwards in {cache})", flush=True)
        doc_vectors = encoder.encode_passages([f"{d.title}\n{d.text}" for d in docs], show_progress=True)
        np.save(cache, doc_vectors)
    query_vectors = encoder.encode_queries([q["text"] for q in queries])
    query_ids = [q["_id"] for q in queries]

    faiss.omp_set_num_threads(1)  # one query at a time on one thread, as the service searches
    flat = faiss.IndexFlatIP(encoder.dimension)
    flat.add(doc_vectors)
    exact = flat.search(query_vectors, 10)[1]
    rows = [
        {
            "index": "exact (IndexFlatIP)",
            "recall@10": 1.0,
            "ndcg@10": ndcg_at_10(exact, doc_ids, query_ids, qrels),
        }
    ]
    for m, ef_construction, ef_search in GRID:
        index = faiss.IndexHNSWFlat(encoder.dimension, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        started = time.perf_counter()
        index.add(doc_vectors)
        build_s = time.perf_counter() - started
        index.hnsw.efSearch = ef_search
        started = time.perf_counter()
        run = np.vstack([index.search(query_vectors[i : i + 1], 10)[1] for i in range(len(query_vectors))])
        query_ms = (time.perf_counter() - started) / len(query_vectors) * 1000
        recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(run, exact, strict=True)]))
        rows.append(
            {
                "index": f"HNSW M={m} efConstruction={ef_construction} efSearch={ef_search}",
                "recall@10": recall,
                "ndcg@10": ndcg_at_10(run, doc_ids, query_ids, qrels),
                "query_ms": query_ms,
                "build_s": build_s,
            }
        )

    print(f"\nSciFact: {len(docs)} abstracts, {len(queries)} claims, all-MiniLM-L6-v2, 1 FAISS thread")
    print(f"{'index':<48} {'recall@10':>9} {'nDCG@10':>8} {'query ms':>9} {'build s':>8}")
    for r in rows:
        q = f"{r['query_ms']:.3f}" if "query_ms" in r else "-"
        b = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        print(f"{r['index']:<48} {r['recall@10']:>9.4f} {r['ndcg@10']:>8.4f} {q:>9} {b:>8}")
    out = args.out / "hnsw_params.json"
    out.write_text(
        json.dumps(
            {"dataset": str(args.data), "docs": len(docs), "queries": len(queries), "rows": rows}, indent=2
        )
    )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
