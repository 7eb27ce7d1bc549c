"""Where one question's embedding time goes, per runtime: operator shares of torch and ONNX Runtime.

    .venv/bin/python -m benchmarks.encoder_profile [--threads 1] [--runs 200]

One 13-word question, encoded ``--runs`` times by each: sentence-transformers in float32 under
``torch.profiler`` (CPU time by operator), and the ``onnx`` and ``onnx-int8`` exports under ONNX
Runtime's own profiler (kernel time by operator type). Also the wall time outside the model (the
tokenizer and Python around it). Prints the top operators' shares; writes
benchmarks/results/encoder_profile.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.server import REPO
from rag_service.config import EncoderSettings

RESULTS = REPO / "benchmarks" / "results"
QUESTION = "What does the global statement do inside a function body in Python?"


def torch_profile(path: str, runs: int) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    features = model.tokenize([QUESTION])
    for _ in range(10):
        model.encode([QUESTION])
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            model(features)
    ops = Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})
    started = time.perf_counter()
    for _ in range(runs):
        model.encode([QUESTION])
    wall_ms = (time.perf_counter() - started) / runs * 1000
    return _shares(ops, runs, wall_ms)


def onnx_profile(backend: str, threads: int, runs: int) -> dict[str, Any]:
    import onnxruntime as ort

    from rag_service.embedding.encoder import Encoder

    encoder = Encoder(EncoderSettings(backend=backend, num_threads=threads))
    onnx = encoder._onnx
    inputs = onnx.tokenize([QUESTION])
    folder = Path(tempfile.mkdtemp(prefix="ort-profile-"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(
        str(onnx.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for _ in range(10):
        session.run(None, inputs)
    for _ in range(runs):
        session.run(None, inputs)
    trace = json.loads(Path(session.end_profiling()).read_text())
    ops: Counter[str] = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ops[event["args"]["op_name"]] += event["dur"]
    started = time.perf_counter()
    for _ in range(runs):
        encoder.encode_queries([QUESTION])
    wall_ms = (time.perf_counter() - started) / runs * 1000
    scale = runs / (runs + 10)  # the trace also holds the warm-up runs
    return _shares(Counter({k: v * scale for k, v in ops.items()}), runs, wall_ms)


def _shares(ops: Counter[str], runs: int, wall_ms: float) -> dict[str, Any]:
    """Operator times in microseconds -> ms per question and share of the model's time."""
    total = sum(ops.values())
    model_ms = total / runs / 1000
    top = [{"op": op, "ms": us / runs / 1000, "share": us / total} for op, us in ops.most_common(8) if total]
    return {"wall_ms": wall_ms, "model_ms": model_ms, "outside_model_ms": wall_ms - model_ms, "top": top}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    from rag_service.embedding.encoder import resolve_encoder_path
    from rag_service.runtime.hardware import cpu_features

    torch.set_num_threads(args.threads)
    path = resolve_encoder_path(EncoderSettings().model)
    results = {
        "torch float32": torch_profile(path, args.runs),
        "onnx": onnx_profile("onnx", args.threads, args.runs),
        "onnx-int8": onnx_profile("onnx-int8", args.threads, args.runs),
    }
    cpu = cpu_features()
    print(f"\n{cpu.model} ({cpu.isa}, {cpu.cores} cores); {args.threads} thread(s), {args.runs} runs")
    for name, r in results.items():
        print(
            f"\n{name}: {r['wall_ms']:.2f} ms a question, {r['model_ms']:.2f} ms in operators, "
            f"{r['outside_model_ms']:.2f} ms outside (tokenizer, Python, framework)"
        )
        for op in r["top"]:
            print(f"  {op['op']:<36} {op['ms']:>7.3f} ms  {op['share']:>6.1%}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "encoder_profile.json"
    out.write_text(
        json.dumps({"machine": cpu.describe(), "threads": args.threads, "runs": results}, indent=2)
    )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
