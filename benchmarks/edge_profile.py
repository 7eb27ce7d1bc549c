"""The edge profile beside the default configuration: resident memory, start time, per-stage latency.

    .venv/bin/python -m benchmarks.edge_profile [--questions 12]

Starts the server twice on the default index, once with the defaults and once with ``EDGE_PROFILE``
(the same settings as the ``rag-edge`` compose service and README "Edge profile"). For each: seconds
from process start to a ready ``/readyz``, resident memory of the server and its vLLM engine process
together (RSS and PSS, read when ready and again after the questions), the start-up budget check's
measured stage times, and the p50/p99 of every stage's ``timings_ms`` over ``--questions`` questions
asked one at a time. Both run with the budgets lifted (``accept_over_budget``) so that they measure;
an edge machine should then run ``rag-service calibrate`` with the profile's settings.
Writes benchmarks/results/edge_profile.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.server import REPO, server

RESULTS = REPO / "benchmarks" / "results"
# Keep in step with docker-compose.yml (rag-edge) and README "Edge profile".
EDGE_PROFILE = {
    # The smallest generator, whatever `auto` would pick on the machine (README, "Answer quality").
    "RAG_GENERATOR__MODEL": "models/smollm2-135m-instruct",
    "RAG_ENCODER__BACKEND": "onnx-int8",
    "RAG_ENCODER__NUM_THREADS": "1",
    "RAG_GENERATOR__CPU_THREADS_BIND": "0",
    "RAG_GENERATOR__KV_CACHE_GIB": "1",
    "RAG_GENERATOR__MAX_MODEL_LEN": "1024",
    "RAG_GENERATOR__MAX_TOKENS_LIMIT": "256",
    "RAG_RETRIEVER__CONTEXT_TOKENS": "512",
    "RAG_ADMISSION__MAX_IN_FLIGHT": "2",
}
MEASURE = {"RAG_BUDGET__ACCEPT_OVER_BUDGET": "true"}


def memory_mib(proc: psutil.Process) -> dict[str, float]:
    """RSS and PSS (shared pages split between processes) of the server and its children."""
    rss = pss = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20}


def run_profile(name: str, env: dict[str, str], questions: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    with server(None, RESULTS / f"edge_profile-{name}.log", {**env, **MEASURE}) as (url, proc):
        ready_s = time.monotonic() - started
        assert proc is not None
        process = psutil.Process(proc.pid)
        at_ready = memory_mib(process)
        readyz = httpx.get(f"{url}/readyz", timeout=10).json()
        timings: dict[str, list[float]] = {}
        for question in questions:
            body = httpx.post(f"{url}/v1/ask", json={"question": question}, timeout=120).json()
            for stage, ms in body.get("timings_ms", {}).items():
                timings.setdefault(stage, []).append(float(ms))
        after = memory_mib(process)
    return {
        "env": env,
        "ready_s": ready_s,
        "memory_at_ready": at_ready,
        "memory_after_questions": after,
        "budget_check_ms": readyz.get("budget_check", {}).get("measured_ms"),
        "encoder_backend": readyz.get("encoder_backend"),
        "stages_ms": {
            stage: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)), "n": len(v)}
            for stage, v in timings.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--profiles", default="default,edge", help="comma-separated: default, edge")
    parser.add_argument(
        "--max-tokens", type=int, help="RAG_GENERATOR__MAX_TOKENS for every profile (default: each one's own)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from rag_service.runtime.hardware import cpu_features

    rows = [json.loads(line) for line in (REPO / "loadtests" / "questions.jsonl").open()]
    questions = [r["question"] for r in rows][: args.questions]
    known: dict[str, dict[str, str]] = {"default": {}, "edge": EDGE_PROFILE}
    names = args.profiles.split(",")
    if unknown := set(names) - set(known):
        parser.error(f"unknown profile(s): {', '.join(sorted(unknown))}")
    # A shorter answer shortens every start's budget check too (it generates max_tokens per question).
    extra = {"RAG_GENERATOR__MAX_TOKENS": str(args.max_tokens)} if args.max_tokens else {}
    results = {name: run_profile(name, {**known[name], **extra}, questions) for name in names}
    cpu = cpu_features()
    print(f"\n{cpu.model} ({cpu.isa}, {cpu.cores} cores); {len(questions)} questions one at a time")
    stages = ["embed", "retrieve", "first_token", "generate", "total"]
    print(
        f"{'profile':<8} {'ready s':>7} {'RSS MiB':>8} {'PSS MiB':>8} " + " ".join(f"{s:>18}" for s in stages)
    )
    for name, r in results.items():
        mem = r["memory_after_questions"]
        cells = []
        for stage in stages:
            s = r["stages_ms"].get(stage)
            cells.append(f"{s['p50']:>8.0f}/{s['p99']:>8.0f}" if s else f"{'-':>18}")
        print(
            f"{name:<8} {r['ready_s']:>7.0f} {mem['rss_mib']:>8.0f} {mem['pss_mib']:>8.0f} " + " ".join(cells)
        )
    print("(stage cells: p50/p99 ms)")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "edge_profile.json"
    out.write_text(json.dumps({"machine": cpu.describe(), "profiles": results}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
