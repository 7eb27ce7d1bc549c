"""May an int8 query encoder search a float32-built index? nDCG@10 and recall@10 of every pairing.

    .venv/bin/python -m benchmarks.mixed_backends [--datasets scifact,squad-v1.1-dev,pubmedqa-pqal]

For each shared dataset, every document (``title\\ntext``, truncated at the encoder's 256 tokens) is
encoded by the ``onnx`` (float32) and the ``onnx-int8`` backends, and so is every query (one at a time,
as the service embeds). Exact inner-product search ranks the documents for each of the four pairings
(query backend x index backend). The verdict decides ``INTERCHANGEABLE`` in
``rag_service/index/snapshot.py``: a mixed pairing must stay within 0.005 nDCG@10 of searching with
the index's own backend. Writes benchmarks/results/mixed_backends.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.retrieval import DATASETS, RESULTS, load_dataset, scores
from rag_service.config import EncoderSettings
from rag_service.embedding.encoder import Encoder
from rag_service.ingestion.corpus import read_jsonl

BACKENDS = ("onnx", "onnx-int8")
TOLERANCE = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--max-queries", type=int, default=1000)
    parser.add_argument("--max-docs", type=int, default=0, help="first N documents only (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from rag_service.runtime.hardware import cpu_features

    encoders = {b: Encoder(EncoderSettings(backend=b)) for b in BACKENDS}
    record: dict[str, dict[str, dict[str, float]]] = {}
    worst = 0.0
    for name in args.datasets.split(","):
        queries, qrels, corpus = load_dataset(name, args.max_queries)
        if corpus is None:
            continue
        docs = list(read_jsonl(corpus))[: args.max_docs or None]
        ids = [d.id for d in docs]
        doc_vectors, query_vectors = {}, {}
        for backend, encoder in encoders.items():
            started = time.perf_counter()
            print(
                f"[{name}] {backend}: encoding {len(docs)} documents and {len(queries)} queries", flush=True
            )
            doc_vectors[backend] = encoder.encode_passages(
                [f"{d.title}\n{d.text}" for d in docs], show_progress=True
            )
            query_vectors[backend] = np.vstack([encoder.encode_queries([q]) for _, q in queries])
            print(f"[{name}] {backend}: {time.perf_counter() - started:.0f} s", flush=True)
        record[name] = {}
        for query_backend in BACKENDS:
            for index_backend in BACKENDS:
                top = np.argsort(-(query_vectors[query_backend] @ doc_vectors[index_backend].T), axis=1)[
                    :, :100
                ]
                runs = {qid: [ids[j] for j in top[i]] for i, (qid, _) in enumerate(queries)}
                record[name][f"query {query_backend} / index {index_backend}"] = scores(runs, qrels)
        for index_backend in BACKENDS:
            other = next(b for b in BACKENDS if b != index_backend)
            same = record[name][f"query {index_backend} / index {index_backend}"]["ndcg@10"]
            mixed = record[name][f"query {other} / index {index_backend}"]["ndcg@10"]
            worst = max(worst, abs(mixed - same))
    cpu = cpu_features()
    print(f"\n{cpu.model} ({cpu.isa}, {cpu.cores} cores); exact search over whole documents")
    print(f"{'dataset':<16} {'query / index':<34} {'nDCG@10':>8} {'R@10':>6} {'R@100':>6}")
    for name, pairs in record.items():
        for pair, s in pairs.items():
            print(
                f"{name:<16} {pair:<34} {s['ndcg@10']:>8.4f} {s['recall@10']:>6.3f} {s['recall@100']:>6.3f}"
            )
    verdict = "interchangeable" if worst <= TOLERANCE else "not interchangeable"
    print(f"largest |mixed - same-backend| nDCG@10: {worst:.4f} (tolerance {TOLERANCE}): {verdict}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "mixed_backends.json"
    out.write_text(
        json.dumps({"machine": cpu.describe(), "results": record, "largest_delta": worst}, indent=2)
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
