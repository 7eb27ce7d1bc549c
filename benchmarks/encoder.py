"""The service's encoder beside plain sentence-transformers, same model, same thread count.

    .venv/bin/python -m benchmarks.encoder [--threads 2] [--queries 200] [--docs 1000]

Single-query latency (one question at a time, as ``/v1/search`` and ``/v1/ask`` embed) and bulk
throughput (documents per second, batch 64, as index building encodes). Both sides run in this one
process, interleaved query by query, so the machine's noise hits them alike. Texts: SciFact claims
and abstracts from the shared data when present, else the built-in corpus. Also checks the two give
the same vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.server import REPO
from rag_service.config import EncoderSettings
from rag_service.ingestion.corpus import python_reference_topics, read_jsonl

RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("RAG_SHARED_DATA", REPO.parent / "shared" / "data"))


def texts(n_queries: int, n_docs: int) -> tuple[list[str], list[str], str]:
    scifact = SHARED / "scifact"
    if (scifact / "corpus.jsonl").is_file():
        rows = [json.loads(line) for line in (scifact / "queries.jsonl").read_text().splitlines() if line]
        corpus = read_jsonl(scifact / "corpus.jsonl")
        docs = [f"{d.title}\n{d.text}" for _, d in zip(range(n_docs), corpus, strict=False)]
        return [r["text"] for r in rows][:n_queries], docs, "SciFact claims / abstracts"
    topics = [f"{d.title}\n{d.text}" for d in python_reference_topics()]
    questions = [json.loads(line)["question"] for line in (REPO / "loadtests" / "questions.jsonl").open()]
    return (questions * 10)[:n_queries], (topics * 20)[:n_docs], "built-in corpus"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--docs", type=int, default=1000, help="documents encoded in bulk")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--dtype",
        default="auto",
        help="service encoder dtype (auto: bf16 where native)",
    )
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rag_service.embedding.encoder import Encoder, resolve_encoder_path
    from rag_service.runtime.hardware import cpu_features

    settings = EncoderSettings(num_threads=args.threads, dtype=args.dtype)
    service = Encoder(settings)
    cpu = cpu_features()
    torch.set_num_threads(args.threads)
    plain = SentenceTransformer(resolve_encoder_path(settings.model), device="cpu")
    queries, docs, source = texts(args.queries, args.docs)

    def plain_encode(batch: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(plain.encode(batch, batch_size=batch_size, normalize_embeddings=True))

    for q in queries[:5]:  # warm both up
        service.encode_queries([q])
        plain_encode([q], 1)
    single: dict[str, list[float]] = {"service": [], "plain": []}
    worst_diff, worst_cos = 0.0, 1.0
    for q in queries:
        t0 = time.perf_counter()
        a = service.encode_queries([q])
        t1 = time.perf_counter()
        b = plain_encode([q], 1)
        t2 = time.perf_counter()
        single["service"].append((t1 - t0) * 1000)
        single["plain"].append((t2 - t1) * 1000)
        worst_diff = max(worst_diff, float(np.abs(a - b).max()))
        worst_cos = min(worst_cos, float((a * b).sum()))
    bulk: dict[str, float] = {}
    started = time.perf_counter()
    service.encode_passages(docs)
    bulk["service"] = len(docs) / (time.perf_counter() - started)
    started = time.perf_counter()
    plain_encode(docs, settings.batch_size)
    bulk["plain"] = len(docs) / (time.perf_counter() - started)

    rows = {
        name: {
            "query_ms_p50": float(np.percentile(single[name], 50)),
            "query_ms_p95": float(np.percentile(single[name], 95)),
            "docs_per_s": bulk[name],
        }
        for name in ("service", "plain")
    }
    print(
        f"\n{cpu.model} ({cpu.isa}, {cpu.cores} cores); all-MiniLM-L6-v2, {args.threads} torch threads, "
        f"{len(queries)} single queries, {len(docs)} docs ({source}); service encoder in {service.dtype} "
        f"({service.dtype_choice.reason}), plain in float32; largest vector difference {worst_diff:.2e}, "
        f"lowest cosine {worst_cos:.5f}"
    )
    print(f"{'encoder':<28} {'query ms p50':>12} {'p95':>8} {'docs/s':>8}")
    for name, label in (("service", "service (rag_service.Encoder)"), ("plain", "sentence-transformers")):
        r = rows[name]
        print(f"{label:<28} {r['query_ms_p50']:>12.2f} {r['query_ms_p95']:>8.2f} {r['docs_per_s']:>8.1f}")
    ratio_q = rows["service"]["query_ms_p50"] / rows["plain"]["query_ms_p50"]
    ratio_d = rows["service"]["docs_per_s"] / rows["plain"]["docs_per_s"]
    print(f"service/plain: query latency x{ratio_q:.2f}, throughput x{ratio_d:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "encoder.json"
    record = {
        "threads": args.threads,
        "queries": len(queries),
        "docs": len(docs),
        "texts": source,
        "machine": cpu.describe(),
        "service_dtype": service.dtype,
        "max_abs_vector_diff": worst_diff,
        "min_cosine": worst_cos,
        "rows": rows,
        "ratio_query_ms_p50": ratio_q,
        "ratio_docs_per_s": ratio_d,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
