"""Every encoder backend beside plain sentence-transformers in float32: same model, same threads.

    .venv/bin/python -m benchmarks.encoder [--threads 2] [--queries 200] [--docs 1000]

Rows: plain ``SentenceTransformer.encode`` in float32 (the reference), plain in bfloat16 where the CPU
runs it natively, and the service's ``Encoder`` on each backend (torch in float32, onnx, onnx-int8).
Per row: one query's latency (p50/p99; all rows interleaved query by query, so the machine's noise
hits them alike), queries/s in batches of 8 and 32, bulk documents/s (batch 64, as index building
encodes), and the cosine of its vectors to the reference's (min and mean over queries and documents).
Texts: SciFact claims and abstracts from the shared data when present, else the built-in corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.server import REPO
from rag_service.config import EncoderSettings
from rag_service.ingestion.corpus import python_reference_topics, read_jsonl

RESULTS = REPO / "benchmarks" / "results"
BULK_BATCH = 64  # as index building encodes (EncoderSettings.batch_size)
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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every row")
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--docs", type=int, default=1000, help="documents encoded in bulk")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rag_service.embedding.encoder import Encoder, resolve_encoder_path
    from rag_service.runtime.hardware import cpu_features

    torch.set_num_threads(args.threads)
    cpu = cpu_features()
    path = resolve_encoder_path(EncoderSettings().model)
    queries, docs, source = texts(args.queries, args.docs)

    def plain(dtype: Any) -> Callable[[list[str], int], np.ndarray]:
        model = SentenceTransformer(path, device="cpu", model_kwargs={"torch_dtype": dtype})

        def encode(batch: list[str], batch_size: int) -> np.ndarray:
            vectors = np.asarray(model.encode(batch, batch_size=batch_size, normalize_embeddings=True))
            vectors = vectors.astype(np.float32)  # normalized in bf16, norms are off by up to ~1%
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

        return encode

    def service(backend: str) -> Callable[[list[str], int], np.ndarray]:
        settings = EncoderSettings(backend=backend, dtype="float32", num_threads=args.threads)
        encoder = Encoder(settings)

        def encode(batch: list[str], batch_size: int) -> np.ndarray:
            if batch_size == len(batch):
                return encoder.encode_queries(batch)
            return encoder.encode_passages(batch)

        return encode

    rows: dict[str, Callable[[list[str], int], np.ndarray]] = {
        "sentence-transformers float32 (plain, reference)": plain(torch.float32)
    }
    if cpu.native_bf16:
        rows["sentence-transformers bfloat16 (plain)"] = plain(torch.bfloat16)
    for backend in ("torch", "onnx", "onnx-int8"):
        rows[f"service {backend}" + (" (float32)" if backend == "torch" else "")] = service(backend)
    reference = next(iter(rows))

    for encode in rows.values():  # warm every row up
        for q in queries[:5]:
            encode([q], 1)
    single: dict[str, list[float]] = {name: [] for name in rows}
    query_vectors: dict[str, list[np.ndarray]] = {name: [] for name in rows}
    for q in tqdm(queries, desc="single queries, every row in turn"):
        for name, encode in rows.items():
            started = time.perf_counter()
            vector = encode([q], 1)
            single[name].append((time.perf_counter() - started) * 1000)
            query_vectors[name].append(vector[0])
    batched: dict[str, dict[int, float]] = {name: {} for name in rows}
    for size in (8, 32):
        batches = [queries[i : i + size] for i in range(0, len(queries) - size + 1, size)]
        for name, encode in rows.items():
            started = time.perf_counter()
            for batch in batches:
                encode(batch, size)
            batched[name][size] = len(batches) * size / (time.perf_counter() - started)
    bulk: dict[str, float] = {}
    doc_vectors: dict[str, np.ndarray] = {}
    for name, encode in tqdm(rows.items(), desc="bulk documents, row by row"):
        started = time.perf_counter()
        doc_vectors[name] = encode(docs, BULK_BATCH)
        bulk[name] = len(docs) / (time.perf_counter() - started)

    record_rows: dict[str, dict[str, float]] = {}
    for name in rows:
        cosines = np.concatenate(
            [
                (np.vstack(query_vectors[name]) * np.vstack(query_vectors[reference])).sum(axis=1),
                (doc_vectors[name] * doc_vectors[reference]).sum(axis=1),
            ]
        )
        record_rows[name] = {
            "query_ms_p50": float(np.percentile(single[name], 50)),
            "query_ms_p99": float(np.percentile(single[name], 99)),
            "queries_per_s_batch8": batched[name][8],
            "queries_per_s_batch32": batched[name][32],
            "docs_per_s": bulk[name],
            "cosine_min": float(cosines.min()),
            "cosine_mean": float(cosines.mean()),
        }
    ref = record_rows[reference]
    print(
        f"\n{cpu.model} ({cpu.isa}, {cpu.cores} cores); all-MiniLM-L6-v2, {args.threads} threads, "
        f"{len(queries)} single queries, {len(docs)} docs ({source})"
    )
    header = f"{'encoder':<50} {'query p50':>9} {'p99':>7} {'q/s b8':>7} {'q/s b32':>8} {'docs/s':>7}"
    print(f"{header} {'x query':>7} {'x docs':>6} {'cos min':>8} {'mean':>7}")
    for name, r in record_rows.items():
        r["speedup_query_p50"] = ref["query_ms_p50"] / r["query_ms_p50"]
        r["speedup_docs_per_s"] = r["docs_per_s"] / ref["docs_per_s"]
        print(
            f"{name:<50} {r['query_ms_p50']:>9.2f} {r['query_ms_p99']:>7.2f} "
            f"{r['queries_per_s_batch8']:>7.0f} {r['queries_per_s_batch32']:>8.0f} {r['docs_per_s']:>7.1f} "
            f"{r['speedup_query_p50']:>7.2f} {r['speedup_docs_per_s']:>6.2f} "
            f"{r['cosine_min']:>8.4f} {r['cosine_mean']:>7.5f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "encoder.json"
    record = {
        "threads": args.threads,
        "queries": len(queries),
        "docs": len(docs),
        "texts": source,
        "machine": cpu.describe(),
        "reference": reference,
        "rows": record_rows,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
