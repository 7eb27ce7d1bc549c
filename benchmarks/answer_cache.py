"""The answer cache under a repeating crowd: the same Locust run with the cache off and on.

    .venv/bin/python -m benchmarks.answer_cache [--conditions off,on] [--users 4] [--time 120s]
        [--zipf-s 1.1] [--questions loadtests/questions.jsonl] [--max-tokens 0] [--url URL] [--out DIR]

For each condition a fresh server is started (``RAG_CACHE__ENABLED=false`` / ``true``, so the cache
starts empty), ``loadtests/zipf_locustfile.py`` runs headless against it (closed loop: each user asks
again as soon as it is answered; questions drawn from a Zipf distribution over the question set, the
same seeded sequences in both conditions), and the server is stopped. From every answer's record:
the hit rate, requests/s, and p50/p99 of each server stage (``timings_ms``: embed, retrieve, cache,
first_token, generate, total) and of the client's end to end and first event (streams), overall and
for hits and misses apart. With ``--url`` the server there is used as is, for one condition (name
it with ``--conditions``); that is how the test suite's smoke run works. Prints the table and writes
``answer_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.server import REPO, server

RESULTS = REPO / "benchmarks" / "results"
STAGES = ["embed", "retrieve", "cache", "first_token", "generate", "total"]
ENABLED = {"off": "false", "on": "true"}


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
    }


def summarize(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    ok = [r for r in records if r.get("status") == 200]
    hits = [r for r in ok if r["cached"]]

    def latencies(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            stage: percentiles([r["timings_ms"][stage] for r in rows if stage in r["timings_ms"]])
            for stage in STAGES
        }
        out["client_end_to_end"] = percentiles([r["client_ms"] for r in rows])
        out["client_first_event"] = percentiles(
            [r["client_first_event_ms"] for r in rows if r["client_first_event_ms"]]
        )
        return out

    return {
        "requests": len(records),
        "answered": len(ok),
        "errors": len(records) - len(ok),
        "degraded": sum(r["degraded"] for r in ok),
        "requests_per_s": len(ok) / seconds if seconds else 0.0,
        "hit_rate": len(hits) / len(ok) if ok else 0.0,
        "distinct_questions": len({r["question"] for r in ok}),
        "all": latencies(ok),
        "hits": latencies(hits),
        "misses": latencies([r for r in ok if not r["cached"]]),
    }


def run_locust(url: str, args: argparse.Namespace, records: Path) -> float:
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/zipf_locustfile.py", "--headless", "--host", url,
        "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", args.time,
        "--only-summary", "--records", str(records), "--zipf-s", str(args.zipf_s),
        "--questions", str(args.questions), "--seed", str(args.seed), "--stop-timeout", "300",
    ]  # fmt: skip
    if args.max_tokens:
        command += ["--max-tokens", str(args.max_tokens)]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if not records.is_file():
        raise SystemExit(f"locust wrote no records (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conditions", default="off,on", help="cache off and/or on, in this order")
    parser.add_argument("--users", type=int, default=4, help="concurrent users (max_in_flight is 4)")
    parser.add_argument("--time", default="120s", help="Locust run time per condition")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--questions", type=Path, default=REPO / "loadtests" / "questions.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=0, help="answer length; 0 = the server's default")
    parser.add_argument("--url", help="use the server there as is (one condition)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if any(c not in ENABLED for c in conditions) or (args.url and len(conditions) != 1):
        raise SystemExit("--conditions: off and/or on (exactly one with --url)")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for condition in conditions:
        env = {"RAG_CACHE__ENABLED": ENABLED[condition]}
        log_path = args.out / f"answer_cache_{condition}_server.log"
        with server(args.url, log_path, env) as (url, _), tempfile.TemporaryDirectory() as tmp:
            records_path = Path(tmp) / "records.jsonl"
            seconds = run_locust(url, args, records_path)
            records = [json.loads(line) for line in records_path.read_text().splitlines() if line]
        results[condition] = summarize(records, seconds)
    print_table(results)
    record = {
        "conditions": results,
        "users": args.users,
        "time": args.time,
        "zipf_s": args.zipf_s,
        "questions": str(args.questions),
        "max_tokens": args.max_tokens or "server default",
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (args.out / "answer_cache.json").write_text(json.dumps(record, indent=2))
    print(f"written to {args.out / 'answer_cache.json'}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    for condition, r in results.items():
        print(
            f"\ncache {condition}: {r['answered']} answers ({r['errors']} errors, {r['degraded']} degraded), "
            f"{r['requests_per_s']:.2f} requests/s, hit rate {r['hit_rate']:.1%}, "
            f"{r['distinct_questions']} distinct questions"
        )
        heads = ["p50 all", "p99 all", "p50 hits", "p99 hits", "p50 miss", "p99 miss"]
        print(f"  {'ms':<20} " + " ".join(f"{h:>9}" for h in heads))
        for stage in [*STAGES, "client_end_to_end", "client_first_event"]:
            cells = []
            for part in ("all", "hits", "misses"):
                p = r[part][stage]
                cells += [f"{p['p50']:>9.1f}", f"{p['p99']:>9.1f}"] if p else [f"{'-':>9}", f"{'-':>9}"]
            print(f"  {stage:<20} {' '.join(cells)}")


if __name__ == "__main__":
    sys.exit(main())
