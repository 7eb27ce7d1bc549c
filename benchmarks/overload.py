"""Per-stage latency of /v1/ask (what the default budgets are sized from), then an overload burst.

Against a running server (``--url``), or one this script starts on a free port (the default):

1. **stages**: ``--sequential`` questions one at a time, then the same at ``--concurrent`` (the
   admission limit), printing p50/p99 of each stage from the responses' ``timings_ms``;
2. **burst**: ``--burst`` questions sent at once (far beyond slots + queue). Reports how many were
   admitted, rejected with 429 (and their Retry-After), degraded, and the admitted requests' latency
   p50/p99 against the server's total budget (from ``/readyz``).

    .venv/bin/python -m benchmarks.overload [--burst 64] [--url http://127.0.0.1:8000]

Prints tables and writes benchmarks/results/overload.json. ``--smoke`` sends a handful of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("embed", "retrieve", "first_token", "generate", "total")
QUESTIONS = [
    "What happens when a break statement is executed inside a loop?",
    "What does the pass statement do?",
    "What is a lambda expression?",
    "What does the assert statement do?",
    "How does the with statement work?",
    "What does the global statement do?",
    "How are exceptions raised?",
    "What does the return statement do?",
    "How does a while loop work?",
    "What is a generator function?",
    "What does the import statement do?",
    "How is a class defined?",
]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else float("nan")


async def ask(client: httpx.AsyncClient, i: int, max_tokens: int) -> dict[str, Any]:
    body = {"question": QUESTIONS[i % len(QUESTIONS)], "max_tokens": max_tokens}
    started = time.perf_counter()
    r = await client.post("/v1/ask", json=body)
    ms = (time.perf_counter() - started) * 1000
    out: dict[str, Any] = {"status": r.status_code, "client_ms": ms}
    if r.status_code == 200:
        payload = r.json()
        out.update(
            timings=payload["timings_ms"], degraded=payload["degraded"], reason=payload["degraded_reason"]
        )
    elif r.status_code == 429:
        out["retry_after"] = int(r.headers.get("retry-after", "0"))
    else:
        out["code"] = r.json().get("error", {}).get("code")
    return out


async def stage_profile(
    client: httpx.AsyncClient, n: int, concurrency: int, max_tokens: int
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    queue = iter(range(n))
    with tqdm(total=n, desc=f"stages x{concurrency}", file=sys.stderr) as bar:

        async def worker() -> None:
            for i in queue:
                results.append(await ask(client, i, max_tokens))
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    ok = [r for r in results if r["status"] == 200]
    row: dict[str, Any] = {"concurrency": concurrency, "requests": n, "ok": len(ok)}
    for stage in STAGES:
        values = [r["timings"][stage] for r in ok if stage in r["timings"]]
        row[stage] = {"p50": pct(values, 50), "p99": pct(values, 99)}
    row["degraded"] = sum(1 for r in ok if r["degraded"])
    return row


async def burst(client: httpx.AsyncClient, n: int, max_tokens: int) -> dict[str, Any]:
    with tqdm(total=n, desc="burst", file=sys.stderr) as bar:

        async def one(i: int) -> dict[str, Any]:
            r = await ask(client, i, max_tokens)
            bar.update(1)
            return r

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(n)))
        seconds = time.perf_counter() - started
    answered = [r for r in results if r["status"] == 200]
    rejected = [r for r in results if r["status"] == 429]
    # Admitted = not refused by admission control: answered, or failed later (e.g. a 504 stage timeout).
    latencies = [r["client_ms"] for r in results if r["status"] != 429]
    return {
        "burst": n,
        "seconds": round(seconds, 1),
        "admitted": n - len(rejected),
        "answered_200": len(answered),
        "rejected_429": len(rejected),
        "other_status": sorted({r["status"] for r in results} - {200, 429}),
        "other_codes": sorted({str(r.get("code")) for r in results if r["status"] not in (200, 429)}),
        "degraded": sum(1 for r in answered if r["degraded"]),
        "degraded_reasons": sorted({r["reason"] for r in answered if r["degraded"]}),
        "admitted_p50_ms": pct(latencies, 50),
        "admitted_p99_ms": pct(latencies, 99),
        "admitted_max_ms": round(max(latencies), 1) if latencies else None,
        "rejected_client_p50_ms": pct([r["client_ms"] for r in rejected], 50),
        "retry_after_s": sorted({r["retry_after"] for r in rejected}),
    }


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAG_SERVER__PORT": str(port), "RAG_SERVER__LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "rag_service.cli", "serve"], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    proc.terminate()
    raise SystemExit("server not ready after 420 s")


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.burst + 8, max_keepalive_connections=args.burst + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        ready = (await client.get("/readyz")).json()
        profiles = [
            await stage_profile(client, args.sequential, 1, args.max_tokens),
            await stage_profile(client, args.sequential, args.concurrent, args.max_tokens),
        ]
        result = await burst(client, args.burst, args.max_tokens)
    return {
        "budgets_ms": ready["budgets_ms"],
        "max_tokens": args.max_tokens,
        "stages": profiles,
        "burst": result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; default: start one on a free port")
    parser.add_argument("--sequential", type=int, default=24, help="requests per stage profile")
    parser.add_argument("--concurrent", type=int, default=4, help="concurrency of the second profile")
    parser.add_argument("--burst", type=int, default=64, help="requests sent at once")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="a handful of short requests")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.sequential, args.concurrent, args.burst, args.max_tokens = 2, 2, 6, 4
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server()
    try:
        report = asyncio.run(run(url, args))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)

    budgets = report["budgets_ms"]
    print(f"\nbudgets (ms): {budgets}")
    print(f"{'profile':>10} " + " ".join(f"{s + ' p50/p99':>22}" for s in STAGES))
    for row in report["stages"]:
        cells = " ".join(f"{row[s]['p50']:>10} / {row[s]['p99']:<9}" for s in STAGES)
        print(f"{'x' + str(row['concurrency']):>10} {cells}  (degraded {row['degraded']}/{row['ok']})")
    b = report["burst"]
    print(
        f"\nburst of {b['burst']}: {b['admitted']} admitted, {b['rejected_429']} rejected with 429 "
        f"(Retry-After {b['retry_after_s']} s); of the admitted, {b['answered_200']} answered "
        f"({b['degraded']} degraded {b['degraded_reasons']}) and "
        f"{b['admitted'] - b['answered_200']} failed {b['other_codes']}; "
        f"admitted latency p50 {b['admitted_p50_ms']} ms, p99 {b['admitted_p99_ms']} ms "
        f"(total budget {budgets['total']:g} ms); 429s answered in p50 {b['rejected_client_p50_ms']} ms"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "overload.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
