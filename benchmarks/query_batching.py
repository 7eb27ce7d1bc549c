"""Query-embedding micro-batching: throughput and latency at 1/8/32 concurrent requests, on vs off.

All in one process with the real MiniLM encoder, side by side in one run:

- ``on``:  the service's QueryBatcher (max batch 32, max wait 2 ms), one encoder thread;
- ``off``: the same QueryBatcher with max batch 1 (one question per forward pass), same thread;
- ``direct``: the code path before micro-batching (``asyncio.to_thread`` per question, so several
  forward passes may run at once on the default thread pool), as a reference.

Torch's intra-op thread count is the same for every mode (``--threads``, default 2).

    .venv/bin/python -m benchmarks.query_batching [--queries 256] [--threads 1]

Prints a table and writes benchmarks/results/query_batching.json. ``--smoke`` runs a few queries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rag_service.config import Settings
from rag_service.embedding.encoder import Encoder
from rag_service.embedding.query_batcher import QueryBatcher
from rag_service.ingestion.corpus import read_jsonl

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCIFACT_QUERIES = REPO.parent / "shared" / "data" / "scifact" / "queries.jsonl"
FALLBACK = [
    "What does the pass statement do?",
    "How does a for loop work?",
    "What is a lambda expression?",
    "What does the assert statement do?",
    "How are exceptions raised and caught?",
    "What does the yield keyword do inside a function?",
    "How does the with statement manage resources?",
    "What is the difference between a list and a tuple?",
]

Embed = Callable[[str], Awaitable[np.ndarray]]


def load_questions(n: int) -> list[str]:
    texts = [d.text for d in read_jsonl(SCIFACT_QUERIES)] if SCIFACT_QUERIES.is_file() else FALLBACK
    return [texts[i % len(texts)] for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def drive(embed: Embed, questions: list[str], concurrency: int, progress: tqdm) -> dict[str, float]:
    """``concurrency`` clients, each sending its next question as soon as the previous one is answered."""
    latencies: list[float] = []
    it = iter(questions)

    async def client() -> None:
        for text in it:
            started = time.perf_counter()
            await embed(text)
            latencies.append((time.perf_counter() - started) * 1000)
            progress.update(1)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {
        "queries_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
    }


async def run_mode(
    mode: str, encoder: Encoder, questions: list[str], concurrency: int, progress: tqdm
) -> dict:
    if mode == "direct":

        async def direct(text: str) -> np.ndarray:
            return (await asyncio.to_thread(encoder.encode_queries, [text]))[0]

        return await drive(direct, questions, concurrency, progress)
    batcher = QueryBatcher(
        encoder.encode_queries,
        max_batch_size=32 if mode == "on" else 1,
        max_wait_ms=2.0 if mode == "on" else 0.0,
    )
    try:
        return await drive(batcher.embed, questions, concurrency, progress)
    finally:
        await batcher.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=256, help="questions per (mode, concurrency) cell")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (same for all modes)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--smoke", action="store_true", help="a few queries per cell, to check it runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    n = 8 if args.smoke else args.queries
    settings = Settings()
    encoder = Encoder(settings.encoder)
    questions = load_questions(n)
    encoder.encode_queries(questions[:32])  # warm-up: first calls are slow everywhere
    modes = ["off", "on", "direct"]
    rows = []
    with tqdm(total=n * len(modes) * len(args.concurrency), desc="queries", file=sys.stderr) as progress:
        for concurrency in args.concurrency:
            # Modes interleaved per concurrency level, so background load on the machine hits all alike.
            for mode in modes:
                row = {"mode": mode, "concurrency": concurrency, "queries": n}
                row.update(asyncio.run(run_mode(mode, encoder, questions, concurrency, progress)))
                rows.append(row)

    print(f"\nquery embedding, {args.threads} torch threads, {n} questions per cell (all-MiniLM-L6-v2)")
    print(f"{'concurrency':>11} {'mode':>6} {'queries/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        cells = f"{r['queries_per_s']:>10} {r['p50_ms']:>8} {r['p99_ms']:>8}"
        print(f"{r['concurrency']:>11} {r['mode']:>6} {cells}")
    ratios = []
    for concurrency in args.concurrency:
        on = next(r for r in rows if r["mode"] == "on" and r["concurrency"] == concurrency)
        off = next(r for r in rows if r["mode"] == "off" and r["concurrency"] == concurrency)
        ratios.append(
            {
                "concurrency": concurrency,
                "throughput_on_over_off": round(on["queries_per_s"] / off["queries_per_s"], 2),
                "p50_on_over_off": round(on["p50_ms"] / off["p50_ms"], 2),
                "p99_on_over_off": round(on["p99_ms"] / off["p99_ms"], 2),
            }
        )
    print("\non/off ratios (throughput: higher is better; latency: lower is better)")
    for r in ratios:
        print(
            f"  {r['concurrency']:>2} concurrent: throughput x{r['throughput_on_over_off']}, "
            f"p50 x{r['p50_on_over_off']}, p99 x{r['p99_on_over_off']}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "query_batching.json"
    out.write_text(json.dumps({"threads": args.threads, "rows": rows, "ratios": ratios}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
