"""Retrieval quality through the service's ``/v1/search`` on every shared dataset, beside exact search
over the same passage vectors and beside BM25 (the ``bm25s`` package) over the same documents.

    .venv/bin/python -m benchmarks.retrieval [--datasets scifact,squad-v1.1-dev,pubmedqa-pqal]
        [--max-queries 1000] [--modes dense,lexical,hybrid] [--url URL] [--vectors-from DIR]

For each dataset: build its index once with ``rag-service build-index`` (cached in
``benchmarks/results/indexes/``), start a server on it, send every query (at most ``--max-queries``,
evenly spread over the file) to ``/v1/search`` with ``top_k=100`` once per retrieval mode (dense:
MiniLM + HNSW, lexical: SQLite FTS5 BM25, hybrid: both, reciprocal-rank fused), stop the server.
Besides quality, each mode's server-side ``retrieve`` stage time (``timings_ms``, median) is reported,
so hybrid's added retrieval latency over dense is measured in the same run. Exact search ranks
the same passage vectors (read back from the index) with ``IndexFlatIP`` and the service's own query
encoder. Passages are mapped to their documents (a document ranks where its best passage does), and
nDCG@10, recall@10 and recall@100 are computed against the dataset's qrels. Dense lists hold at most
100 passages, hence sometimes fewer than 100 documents; BM25 ranks whole documents (title + text,
English stopwords).

``--vectors-from DIR`` builds a missing index from a format-1 index cache (``index.faiss`` +
``passages.jsonl``, as the benchmark wrote before the SQLite store) instead of re-encoding: only after
checking that every cached passage is exactly the chunk our chunker cuts from the corpus (same ids,
same text, same embedding text), so the vectors are the ones ``build-index`` would compute.

``--datasets builtin`` evaluates the default index (the Python reference) with the questions in
``loadtests/questions.jsonl``, whose ``doc_id`` says which topic answers each (written by us: a
sanity check, not a benchmark). With ``--url`` the server there is used as is (it must serve the
dataset's index); that is how the test suite's smoke run works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.server import REPO, server
from rag_service.config import Settings
from rag_service.ingestion.corpus import python_reference_topics, read_jsonl
from rag_service.storage.store import DocumentStore

RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = ["scifact", "squad-v1.1-dev", "pubmedqa-pqal"]
TOP_K = 100  # the service's largest top_k (RAG_RETRIEVER__MAX_TOP_K)
MODES = ["dense", "lexical", "hybrid"]
# Quality is measured with the embed and retrieve budgets lifted, so that a noisy moment on the shared
# machine neither fails a query (504) nor turns a hybrid search into its dense fallback; the stage
# times are reported (p50, p99) to compare with the default budgets.
LIFTED_BUDGETS = {"RAG_BUDGET__EMBED_MS": "5000", "RAG_BUDGET__RETRIEVE_MS": "2000"}


def ndcg_at_10(ranked: Sequence[str], relevant: set[str]) -> float:
    dcg = sum(1 / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]) if doc in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(10, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def scores(runs: dict[str, list[str]], qrels: dict[str, set[str]]) -> dict[str, float]:
    qids = list(runs)
    return {
        "ndcg@10": float(np.mean([ndcg_at_10(runs[q], qrels[q]) for q in qids])),
        "recall@10": float(np.mean([recall_at(runs[q], qrels[q], 10) for q in qids])),
        "recall@100": float(np.mean([recall_at(runs[q], qrels[q], 100) for q in qids])),
    }


def documents_in_order(doc_ids: Sequence[str]) -> list[str]:
    """Passage ranking -> document ranking: a document ranks where its best passage does."""
    return list(dict.fromkeys(doc_ids))


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items taken evenly across the list (deterministic)."""
    if not limit or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def load_dataset(
    name: str, max_queries: int
) -> tuple[list[tuple[str, str]], dict[str, set[str]], Path | None]:
    """(queries as (id, text), qrels, corpus.jsonl or None for the built-in corpus)."""
    if name == "builtin":
        rows = [
            json.loads(line) for line in (REPO / "loadtests" / "questions.jsonl").read_text().splitlines()
        ]
        queries = [(str(i), r["question"]) for i, r in enumerate(rows)]
        judged = {str(i): {r["doc_id"]} for i, r in enumerate(rows)}
        return spread(queries, max_queries), judged, None
    folder = SHARED / name
    qrels: dict[str, set[str]] = {}
    for line in (folder / "qrels.tsv").read_text().splitlines()[1:]:
        qid, doc_id, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(doc_id)
    rows = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines() if line.strip()]
    queries = [(r["_id"], r["text"]) for r in rows if r["_id"] in qrels]
    return spread(queries, max_queries), qrels, folder / "corpus.jsonl"


def import_format1(old: Path, corpus: Path, folder: Path) -> None:
    """A store + graph at ``folder`` from a format-1 cache's vectors (see the module docstring)."""
    import faiss

    from rag_service.embedding.encoder import Encoder
    from rag_service.index.live import LiveIndex
    from rag_service.ingestion.ingestor import chunker_for
    from rag_service.storage.store import DocumentWrite

    settings = Settings()
    encoder = Encoder(settings.encoder)
    manifest = json.loads((old / "manifest.json").read_text())
    if manifest.get("encoder") != encoder.model_id or manifest.get("dimension") != encoder.dimension:
        raise SystemExit(f"{old} was built with another encoder: {manifest.get('encoder')}")
    graph = faiss.read_index(str(old / "index.faiss"))
    vectors = graph.reconstruct_n(0, graph.ntotal)
    cached = [json.loads(line) for line in (old / "passages.jsonl").read_text().splitlines()]
    chunker = chunker_for(encoder, settings)
    by_doc: dict[str, list[int]] = {}
    for row, passage in enumerate(cached):
        by_doc.setdefault(passage["doc_id"], []).append(row)
    writes = []
    for doc in tqdm(list(read_jsonl(corpus)), desc=f"checking {old.name}'s chunks", unit="doc"):
        rows = by_doc.get(doc.id, [])
        chunks = chunker.split(doc.text)
        got = [(cached[r]["id"], cached[r]["title"], cached[r]["text"]) for r in rows]
        if got != [(f"{doc.id}#{n}", doc.title, text) for n, text in enumerate(chunks)]:
            raise SystemExit(f"{old}: the cached chunks of {doc.id} differ from ours; rebuild instead")
        writes.append(DocumentWrite(doc, chunks, vectors[rows]))
    staging = folder.with_name(f".{folder.name}.importing")
    if staging.exists():
        import shutil

        shutil.rmtree(staging)
    store = DocumentStore.create(staging, encoder.index_spec().as_meta())
    for start in range(0, len(writes), 256):
        store.write(upserts=writes[start : start + 256])
    store.close()
    LiveIndex.open(staging, encoder.index_spec(), settings.index).close()
    staging.rename(folder)


def build_index(name: str, corpus: Path, index_dir: Path, vectors_from: Path | None = None) -> None:
    if (index_dir / name / "manifest.json").is_file():
        print(f"[{name}] index cached in {index_dir / name}", flush=True)
        return
    if vectors_from is not None and (vectors_from / name / "passages.jsonl").is_file():
        print(f"[{name}] building its index from the vectors cached in {vectors_from / name}", flush=True)
        import_format1(vectors_from / name, corpus, index_dir / name)
        return
    print(f"[{name}] building its index (once) with rag-service build-index", flush=True)
    env = {**os.environ, "RAG_INDEX__DIR": str(index_dir), "RAG_INDEX__NAME": name}
    subprocess.run(
        [sys.executable, "-m", "rag_service.cli", "build-index", "--corpus", str(corpus)],
        cwd=REPO,
        env=env,
        check=True,
    )


def service_runs(
    url: str, queries: list[tuple[str, str]], name: str, mode: str
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Document rankings per query, and latency: client-side p50 and the server's stage medians."""
    runs: dict[str, list[str]] = {}
    took: list[float] = []
    stages: dict[str, list[float]] = {}
    fallbacks = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for qid, text in tqdm(queries, desc=f"[{name}] /v1/search {mode}", unit="q"):
            started = time.perf_counter()
            r = client.post("/v1/search", json={"query": text, "top_k": TOP_K, "mode": mode})
            took.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
            body = r.json()
            runs[qid] = documents_in_order([h["doc_id"] for h in body["hits"]])
            for stage in ("embed", "retrieve", "retrieve_dense", "retrieve_lexical"):
                if stage in body["timings_ms"]:
                    stages.setdefault(stage, []).append(body["timings_ms"][stage])
            fallbacks += body["retrieval"]["fallback"] is not None
    latency = {"search_ms_p50": float(np.median(took)), "fallbacks": float(fallbacks)}
    latency.update({f"{stage}_ms_p50": float(np.median(v)) for stage, v in stages.items()})
    latency.update({f"{stage}_ms_p99": float(np.percentile(v, 99)) for stage, v in stages.items()})
    return runs, latency


def exact_runs(index_folder: Path, queries: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The same passage vectors as the service's index, searched exhaustively."""
    import faiss

    from rag_service.embedding.encoder import Encoder

    # The live chunks' stored embeddings (the vectors the service's HNSW graph holds), from the store.
    store = DocumentStore.open(index_folder)
    try:
        changes = store.changes_since(0)  # every live chunk with its vector, in one read transaction
    finally:
        store.close()
    live, vectors = changes.added, changes.embeddings
    doc_of = [passage.doc_id for _, passage in live]
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    encoder = Encoder(Settings().encoder)
    query_vectors = encoder.encode_queries([text for _, text in queries])
    ids = flat.search(query_vectors, TOP_K)[1]
    return {
        qid: documents_in_order([doc_of[int(i)] for i in row if i >= 0])
        for (qid, _), row in zip(queries, ids, strict=True)
    }


def bm25_runs(corpus: Path | None, queries: list[tuple[str, str]]) -> dict[str, list[str]]:
    import bm25s

    docs = list(read_jsonl(corpus) if corpus else python_reference_topics())
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([f"{d.title}\n{d.text}" for d in docs], stopwords="en", show_progress=False)
    )
    k = min(TOP_K, len(docs))
    tokens = bm25s.tokenize([text for _, text in queries], stopwords="en", show_progress=False)
    results, _ = retriever.retrieve(tokens, k=k, show_progress=False)
    return {qid: [docs[int(j)].id for j in row] for (qid, _), row in zip(queries, results, strict=True)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated; 'builtin' too")
    parser.add_argument("--max-queries", type=int, default=1000, help="per dataset, 0 = all")
    parser.add_argument("--url", help="use the server there (it must serve the dataset's index)")
    parser.add_argument("--modes", default=",".join(MODES), help="retrieval modes to send, comma-separated")
    parser.add_argument("--vectors-from", type=Path, help="a folder of format-1 index caches to reuse")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    index_dir = args.out / "indexes"
    table = []
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        if name != "builtin" and not (SHARED / name / "corpus.jsonl").is_file():
            print(f"[{name}] no data at {SHARED / name}: skipped", file=sys.stderr)
            continue
        queries, qrels, corpus = load_dataset(name, args.max_queries)
        if corpus is None:
            index_folder = REPO / Settings().index_path
            env = dict(LIFTED_BUDGETS)
        else:
            build_index(name, corpus, index_dir, args.vectors_from)
            index_folder = index_dir / name
            env = {"RAG_INDEX__DIR": str(index_dir), "RAG_INDEX__NAME": name, **LIFTED_BUDGETS}
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        service: dict[str, dict[str, list[str]]] = {}
        latency: dict[str, dict[str, float]] = {}
        with server(args.url, args.out / f"server-{name}.log", env) as (url, _):
            for mode in modes:
                service[mode], latency[mode] = service_runs(url, queries, name, mode)
        exact = exact_runs(index_folder, queries)
        bm25 = bm25_runs(corpus, queries)
        rows = {f"service {mode}": scores(service[mode], qrels) for mode in modes}
        rows["exact (IndexFlatIP)"] = scores(exact, qrels)
        rows["BM25 (bm25s)"] = scores(bm25, qrels)
        table.append({"dataset": name, "queries": len(queries), "latency": latency, "rows": rows})

    print(f"\n{'dataset':<16} {'queries':>7} {'system':<28} {'nDCG@10':>8} {'R@10':>7} {'R@100':>7}")
    for entry in table:
        for system, s in entry["rows"].items():
            print(
                f"{entry['dataset']:<16} {entry['queries']:>7} {system:<28} "
                f"{s['ndcg@10']:>8.4f} {s['recall@10']:>7.4f} {s['recall@100']:>7.4f}"
            )
        for mode, lat in entry["latency"].items():
            print(
                f"{'':<16} {mode:<8} /v1/search p50 {lat['search_ms_p50']:.1f} ms (client, top_k={TOP_K}); "
                f"server retrieve stage p50 {lat.get('retrieve_ms_p50', float('nan')):.2f} ms, "
                f"p99 {lat.get('retrieve_ms_p99', float('nan')):.2f} ms; "
                f"lexical fallbacks {lat['fallbacks']:.0f}"
            )
        rows, lat = entry["rows"], entry["latency"]
        if "service hybrid" in rows and "service dense" in rows:
            gain = rows["service hybrid"]["ndcg@10"] / rows["service dense"]["ndcg@10"]
            added = lat["hybrid"]["retrieve_ms_p50"] - lat["dense"]["retrieve_ms_p50"]
            print(f"{'':<16} hybrid/dense nDCG@10 {gain:.3f}; retrieve stage +{added:.2f} ms (p50)")
    out = args.out / "retrieval.json"
    out.write_text(json.dumps({"top_k": TOP_K, "datasets": table}, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
