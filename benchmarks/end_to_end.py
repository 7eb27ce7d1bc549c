"""End to end: ``/v1/search`` and ``/v1/ask`` throughput and latency at a fixed concurrency.

    .venv/bin/python -m benchmarks.end_to_end [--concurrency 4] [--duration 60] [--url URL]

``--concurrency`` clients each send one request after another (a closed loop) for ``--duration``
seconds per endpoint, questions from ``loadtests/questions.jsonl`` in turn. Reported per endpoint:
requests/s, client latency p50/p99, and the server's own ``timings_ms.total`` p50 beside it: their
ratio is what HTTP, JSON and queueing in front of the pipeline add. A server is started unless
``--url`` names a running one. ``/v1/ask`` uses the server's default answer settings unless
``--max-tokens`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.server import REPO, server

RESULTS = REPO / "benchmarks" / "results"


async def closed_loop(
    url: str, path: str, body: dict[str, Any], questions: list[str], concurrency: int, duration: float
) -> dict[str, Any]:
    """``body`` holds the fixed fields; each request adds the next question."""
    field = "query" if path == "/v1/search" else "question"
    latencies: list[float] = []
    server_totals: list[float] = []
    errors = 0
    turn = itertools.cycle(questions)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        # One request first so that connection set-up is not in the figures.
        (await client.post(path, json={**body, field: questions[0]})).raise_for_status()
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(path, json={**body, field: next(turn)})
                if r.status_code != 200:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                server_totals.append(float(r.json()["timings_ms"]["total"]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    if not latencies:
        raise SystemExit(f"no successful {path} request in {duration} s")
    return {
        "endpoint": path,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "server_total_ms_p50": float(np.percentile(server_totals, 50)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per endpoint")
    parser.add_argument("--endpoints", default="search,ask", help="search, ask or both")
    parser.add_argument("--max-tokens", type=int, default=0, help="answer length; 0 = the server's default")
    parser.add_argument("--url", help="a running server (else one is started)")
    parser.add_argument("--questions", type=Path, default=REPO / "loadtests" / "questions.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    questions = [
        json.loads(line)["question"] for line in args.questions.read_text().splitlines() if line.strip()
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with server(args.url, args.out / "server-end_to_end.log") as (url, _):
        for name in args.endpoints.split(","):
            path = f"/v1/{name}"
            body = {"max_tokens": args.max_tokens} if name == "ask" and args.max_tokens else {}
            print(f"{path}: {args.concurrency} clients for {args.duration:.0f} s", flush=True)
            rows.append(asyncio.run(closed_loop(url, path, body, questions, args.concurrency, args.duration)))
    print(
        f"\n{'endpoint':<11} {'conc':>4} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'server p50':>10} {'x':>5}"
    )
    for r in rows:
        ratio = r["latency_ms_p50"] / r["server_total_ms_p50"]
        r["client_over_server_p50"] = ratio
        print(
            f"{r['endpoint']:<11} {r['concurrency']:>4} {r['requests_per_s']:>7.2f} "
            f"{r['latency_ms_p50']:>8.1f} {r['latency_ms_p99']:>8.1f} "
            f"{r['server_total_ms_p50']:>10.1f} {ratio:>5.2f}"
        )
    out = args.out / "end_to_end.json"
    out.write_text(json.dumps({"rows": rows}, indent=2))
    print("\nx = client p50 / the server's own total p50 (HTTP, JSON and queueing in front of the pipeline)")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
