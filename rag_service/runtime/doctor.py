"""``rag-service doctor``: what this machine is and what the service will do on it.

Prints the machine (CPU model, vector ISA, what torch dispatches to, cores, memory, GPUs), the
settings as resolved here (dtypes and why, vLLM's thread binding and allocator preload, the budgets
and where each came from), the last calibration's measurements, and, with ``--url``, what a running
server's budget check measured against its budgets. Starts no model: it answers in a few seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rag_service.config import Settings
from rag_service.runtime.calibration import DEFAULT_RECORD, budget_sources, read_record


def _row(name: str, value: object) -> str:
    return f"  {name:<22} {value}"


def machine_lines() -> list[str]:
    from rag_service.runtime.hardware import cpu_features, cuda_devices

    cpu = cpu_features()
    return [
        "machine",
        _row("cpu", cpu.model),
        _row("isa", f"{cpu.isa} (flags: {', '.join(sorted(cpu.flags)) or 'none'})"),
        _row("torch dispatches", cpu.torch_capability),
        _row("ONEDNN_MAX_CPU_ISA", cpu.onednn_max_isa or "(not set)"),
        _row("native bf16", "yes" if cpu.native_bf16 else "no"),
        _row("cores usable", cpu.cores),
        _row("memory", f"{cpu.memory_gib} GiB"),
        _row("CUDA devices", cuda_devices()),
    ]


def settings_lines(settings: Settings) -> list[str]:
    from rag_service.embedding.encoder import resolve_backend
    from rag_service.runtime.hardware import (
        cuda_bf16,
        cuda_devices,
        encoder_dtype,
        generator_dtype,
        torch_device,
    )
    from rag_service.runtime.preload import preload_state

    gpus = cuda_devices()
    gen = generator_dtype(settings.generator.dtype, gpus=gpus, gpu_bf16=cuda_bf16())
    choice = settings.generator.model_choice
    device = torch_device(settings.encoder.device, gpus)
    enc = encoder_dtype(settings.encoder.dtype, device)
    backend = resolve_backend(settings.encoder.backend, device)
    sources = budget_sources()
    budgets = settings.budget.as_dict()
    return [
        "resolved settings",
        _row("generator", f"{choice.model} (asked: {choice.requested}; {choice.reason})"),
        _row("generator dtype", f"{gen.dtype} (asked: {gen.requested}; {gen.reason})"),
        _row("encoder", f"{settings.encoder.model} on {device}"),
        _row("encoder backend", f"{backend.backend} (asked: {backend.requested}; {backend.reason})"),
        _row("encoder dtype", f"{enc.dtype} (torch backend; asked: {enc.requested}; {enc.reason})"),
        _row("vLLM threads bind", settings.generator.cpu_threads_bind),
        _row("allocator preload", preload_state(settings.generator)),
        _row("retrieval", f"{settings.retriever.mode}, top_k {settings.retriever.top_k}"),
        _row("context tokens", settings.retriever.context_tokens),
        _row("max tokens", settings.generator.max_tokens),
        _row("max in flight", settings.admission.max_in_flight),
        "budgets (ms)",
        *(_row(stage, f"{ms:g} ({sources[stage]})") for stage, ms in budgets.items()),
        _row("accept over budget", settings.budget.accept_over_budget),
    ]


def _measured(stats: dict[str, Any], budgets: dict[str, float] | None = None) -> list[str]:
    lines = []
    for stage, values in stats.items():
        limit = f" / budget {budgets[stage]:g}" if budgets and stage in budgets else ""
        lines.append(
            _row(stage, f"p50 {values['p50']:g}  p99 {values['p99']:g}  max {values['max']:g}{limit}")
        )
    return lines


def calibration_lines(record: dict[str, Any] | None, path: Path) -> list[str]:
    if record is None:
        return [f"calibration: none recorded at {path} (run `rag-service calibrate`)"]
    lines = [f"last calibration ({record['at']}, {record['seconds']} s, {path})"]
    for name in ("single", "concurrent"):
        part = record[name]
        lines.append(f"  {name}: {part['answers']} answers, {part['concurrency']} at once (ms)")
        lines += ["  " + line for line in _measured(part["measured_ms"])]
    lines.append(_row("proposed", ", ".join(f"{s} {v:g}" for s, v in record["proposed_ms"].items())))
    return lines


def server_lines(url: str) -> list[str]:
    import httpx

    try:
        body = httpx.get(f"{url.rstrip('/')}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError) as exc:
        return [f"server at {url}: not reachable ({type(exc).__name__}: {exc})"]
    lines = [f"server at {url}: {body.get('status')} ({body.get('reason')})"]
    check = body.get("budget_check")
    if check:
        lines.append(
            f"  budget check: {check['answers']} fresh questions, {check['concurrency']} at once, "
            f"{check['max_tokens']} tokens each, within budgets: {check['within_budgets']}"
        )
        lines += _measured(check["measured_ms"], body.get("budgets_ms"))
        lines += [f"  miss: {miss}" for miss in check.get("misses", [])]
    return lines


def report(settings: Settings, url: str | None, record_path: Path = DEFAULT_RECORD) -> str:
    from rag_service.runtime.heavy_imports import import_heavy_libraries

    import_heavy_libraries()  # torch tells what it dispatches to
    sections = [
        machine_lines(),
        settings_lines(settings),
        calibration_lines(read_record(record_path), record_path),
    ]
    if url:
        sections.append(server_lines(url))
    preload = os.environ.get("LD_PRELOAD")
    if preload:
        sections.append([f"LD_PRELOAD={preload}"])
    return "\n".join("\n".join(lines) for lines in sections) + "\n"


def report_json(settings: Settings, record_path: Path = DEFAULT_RECORD) -> str:
    from rag_service.runtime.hardware import cpu_features, cuda_bf16, cuda_devices, generator_dtype

    gen = generator_dtype(settings.generator.dtype, gpus=cuda_devices(), gpu_bf16=cuda_bf16())
    return json.dumps(
        {
            "machine": cpu_features().describe(),
            "generator": settings.generator.model_choice.describe(),
            "generator_dtype": gen.describe(),
            "budgets_ms": settings.budget.as_dict(),
            "budget_sources": budget_sources(),
            "calibration": read_record(record_path),
        },
        indent=2,
    )
