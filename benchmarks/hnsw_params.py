"""HNSW parameters: recall@10 against exact search, query latency across efSearch, build time.

On SciFact (the measurement behind the index defaults M=32, efConstruction=200, efSearch=64), with
nDCG@10 beside exact search:

    .venv/bin/python benchmarks/hnsw_params.py [--data ../shared/data/scifact]

On N synthetic 384-d vectors (the ANN scale test; build time and memory too):

    .venv/bin/python benchmarks/hnsw_params.py --synthetic 1000000                           # mixture
    .venv/bin/python benchmarks/hnsw_params.py --synthetic 1000000 --distribution embedding  # MiniLM-shaped

Prints a table and writes benchmarks/results/hnsw_params.json (or ann_synthetic_<N>[_embedding].json).
Encoding the 5,183 abstracts takes about 3-4 minutes on 2 cores; the vectors are cached in
benchmarks/results/ for later runs. Two synthetic distributions, queries being fresh draws from the
same one:

- ``mixture``: a Gaussian mixture (``--clusters`` centres, isotropic noise, normalized). A stress
  test: every point carries 384 dimensions of independent noise, so a point's nearest neighbours are
  near-ties with hundreds of others from its cluster.
- ``embedding``: a Gaussian with the mean and covariance of real MiniLM vectors (the SciFact vector
  cache that the SciFact run writes, or ``--like FILE.npy``), normalized: the variance spectrum of real
  embeddings, whose variance sits in a few dozen directions, at any size.

Both print how far apart the exact 1st, 10th and 100th neighbours' similarities lie (for SciFact
too): the smaller the gap, the more recall@10 measures ties rather than a search's quality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rag_service.config import Settings
from rag_service.embedding.encoder import Encoder
from rag_service.ingestion.corpus import read_jsonl

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GRID = [(32, 40, 16), (32, 200, 16), (32, 200, 32), (32, 200, 64), (32, 200, 128)]
SYNTHETIC_EF_SEARCH = [16, 32, 64, 128, 256]
ADD_BATCH = 20_000  # vectors per FAISS add call: one progress tick each


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


def normalized_blocks(n: int, dim: int, draw: Callable[[int], np.ndarray]) -> np.ndarray:
    """``n`` unit vectors, ``draw(count)`` at a time in blocks of 100,000 to bound memory."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = draw(stop - start)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def synthetic_vectors(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Normalized float32 draws from a Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)

    def draw(count: int) -> np.ndarray:
        block = centres[rng.integers(0, clusters, count)]
        return block + rng.standard_normal(block.shape, dtype=np.float32) * spread

    return normalized_blocks(n, dim, draw)


def embedding_shaped(like: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Normalized draws from a Gaussian with the mean and covariance of the vectors in ``like``."""
    rng = np.random.default_rng(seed)
    dim = like.shape[1]
    mean = like.mean(axis=0, dtype=np.float64).astype(np.float32)
    values, vectors = np.linalg.eigh(np.cov(like, rowvar=False))
    scale = (vectors * np.sqrt(np.clip(values, 0, None))).T.astype(np.float32)  # x = mean + z @ scale

    def draw(count: int) -> np.ndarray:
        return rng.standard_normal((count, dim), dtype=np.float32) @ scale + mean

    return normalized_blocks(n, dim, draw)


def neighbour_gaps(similarities: np.ndarray) -> dict[str, float]:
    """Mean similarity of the exact 1st, 10th and 100th neighbours (rows sorted best first)."""
    k = similarities.shape[1]
    return {f"sim@{r}": float(similarities[:, r - 1].mean()) for r in (1, 10, 100) if r <= k}


def print_gaps(gaps: dict[str, float]) -> None:
    print("exact neighbours' mean similarity: " + ", ".join(f"{k} {v:.3f}" for k, v in gaps.items()))


def run_synthetic(args: argparse.Namespace) -> int:
    """HNSW at scale on synthetic vectors: build time and memory, then recall@10 vs exact and
    single-query latency for each efSearch."""
    import faiss
    from tqdm import tqdm

    n = args.synthetic
    if args.distribution == "embedding":
        like_path = args.like or args.out / "scifact-5183-vectors.npy"
        if not like_path.is_file():
            print(f"no vectors at {like_path}: run the SciFact benchmark first, or --like", file=sys.stderr)
            return 2
        like = np.load(like_path)
        dim = like.shape[1]
        print(f"generating {n:,} {dim}-d vectors shaped like {like_path.name}", flush=True)
        base = embedding_shaped(like, n, seed=0)
        queries = embedding_shaped(like, args.queries, seed=1)
        shape = f"Gaussian with the mean and covariance of {like_path.name}"
    else:
        dim = args.dim
        print(f"generating {n:,} synthetic {dim}-d vectors ({args.clusters} clusters)", flush=True)
        base = synthetic_vectors(n, dim, args.clusters, args.spread, seed=0)
        queries = synthetic_vectors(args.queries, dim, args.clusters, args.spread, seed=1)
        shape = f"mixture of {args.clusters} Gaussians, spread {args.spread}"
    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    started = time.perf_counter()
    with tqdm(total=n, desc=f"HNSW build ({args.threads} threads)", unit="vec") as bar:
        for start in range(0, n, ADD_BATCH):
            index.add(base[start : start + ADD_BATCH])
            bar.update(min(ADD_BATCH, n - start))
    build_s = time.perf_counter() - started
    # Memory of FAISS's own arrays: the vectors it copied, the graph's neighbour lists (int32) and
    # per-vector levels/offsets. (Process RSS is no good here: freed blocks are reused.)
    links = index.hnsw.neighbors.size()  # type: ignore[attr-defined]
    graph_mb = (links * 4 + n * (4 + 8)) / 2**20
    # Exact top-10 by brute force over the same vectors (the reference, not the thing measured).
    exact_sims, exact = faiss.knn(queries, base, 100, metric=faiss.METRIC_INNER_PRODUCT)
    exact = exact[:, :10]
    gaps = neighbour_gaps(exact_sims)
    faiss.omp_set_num_threads(1)  # one query at a time on one thread, as the service searches
    rows = []
    for ef_search in args.ef_search:
        index.hnsw.efSearch = ef_search
        times = []
        found = []
        for i in range(len(queries)):
            t0 = time.perf_counter()
            found.append(index.search(queries[i : i + 1], 10)[1][0])
            times.append((time.perf_counter() - t0) * 1000)
        recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)]))
        rows.append(
            {
                "ef_search": ef_search,
                "recall@10": recall,
                "query_ms_p50": float(np.percentile(times, 50)),
                "query_ms_p99": float(np.percentile(times, 99)),
            }
        )
    vectors_mb = n * dim * 4 / 2**20
    index_mb = vectors_mb + graph_mb
    print(
        f"\n{n:,} synthetic {dim}-d vectors ({shape}), "
        f"HNSW M={args.m} efConstruction={args.ef_construction}: "
        f"build {build_s:.1f} s on {args.threads} threads ({n / build_s:,.0f} vectors/s), "
        f"index memory {index_mb:,.0f} MB (vectors {vectors_mb:,.0f} MB + graph {graph_mb:,.0f} MB); "
        f"{len(queries)} queries, exact = brute-force inner product (faiss.knn)"
    )
    print_gaps(gaps)
    print(f"{'efSearch':>8} {'recall@10':>9} {'query ms p50':>12} {'p99':>8}")
    for r in rows:
        print(
            f"{r['ef_search']:>8} {r['recall@10']:>9.4f} {r['query_ms_p50']:>12.3f} {r['query_ms_p99']:>8.3f}"
        )
    suffix = "_embedding" if args.distribution == "embedding" else ""
    out = args.out / f"ann_synthetic_{n}{suffix}.json"
    record = {
        "vectors": n,
        "dim": dim,
        "distribution": shape,
        "exact_neighbour_similarity": gaps,
        "clusters": args.clusters,
        "spread": args.spread,
        "queries": len(queries),
        "hnsw_m": args.m,
        "ef_construction": args.ef_construction,
        "build_threads": args.threads,
        "build_s": build_s,
        "index_mb": index_mb,
        "raw_vectors_mb": vectors_mb,
        "graph_mb": graph_mb,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {out}")
    return 0


def main() -> int:
    import faiss

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--docs", type=int, default=0, help="use only the first N abstracts (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and the vector cache")
    synthetic = parser.add_argument_group("synthetic vectors (instead of SciFact)")
    synthetic.add_argument(
        "--synthetic", type=int, default=0, help="number of synthetic vectors (e.g. 1000000)"
    )
    synthetic.add_argument(
        "--distribution",
        choices=["mixture", "embedding"],
        default="mixture",
        help="mixture: isotropic Gaussian mixture (stress test); embedding: shaped like real MiniLM vectors",
    )
    synthetic.add_argument(
        "--like", type=Path, help="real vectors (.npy) for --distribution embedding (default: SciFact's)"
    )
    synthetic.add_argument("--dim", type=int, default=384, help="mixture: vector dimension (MiniLM: 384)")
    synthetic.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture components")
    synthetic.add_argument(
        "--spread", type=float, default=0.5, help="noise around each centre, relative to the centres' scale"
    )
    synthetic.add_argument("--queries", type=int, default=200, help="queries measured")
    synthetic.add_argument("--m", type=int, default=32, help="HNSW M")
    synthetic.add_argument("--ef-construction", type=int, default=200, help="HNSW efConstruction")
    synthetic.add_argument(
        "--ef-search", type=lambda s: [int(x) for x in s.split(",")], default=SYNTHETIC_EF_SEARCH
    )
    synthetic.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="FAISS threads for the build"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        return run_synthetic(args)
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
    exact_sims, exact = flat.search(query_vectors, 100)
    exact = exact[:, :10]
    gaps = neighbour_gaps(exact_sims)
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
    print_gaps(gaps)
    out = args.out / "hnsw_params.json"
    out.write_text(
        json.dumps(
            {
                "dataset": str(args.data),
                "docs": len(docs),
                "queries": len(queries),
                "exact_neighbour_similarity": gaps,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
