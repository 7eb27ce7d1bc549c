"""``rag-service calibrate``: measure every stage on this machine, propose budgets, write them to ``.env``.

The rule (README, "Latency budgets"): each stage's budget is its measured p99 times ``HEADROOM``
(1.5), rounded up to two significant digits, and never under ``MINIMUM_MS`` (the cheap stages' p99 is a
few ms, and a budget that tight would fail on the first scheduler hiccup). The total is the three
stages plus a quarter for admission queueing, plus the reply reserve. Measured with the configured
models, dtype, context budget and concurrency: the service's own pipeline, fresh questions on an empty
prefix cache, one at a time and then ``max_in_flight`` at once, each answer ``max_tokens`` long.

The measuring run itself (it starts the service) is ``measuring.calibrate``; this module is the rule
and the ``.env`` block, which the service reads too. The budgets go into a marked block of ``.env``
(rewritten by the next calibration; the rest of the file is left alone). A budget set explicitly
always wins: one in the environment overrides ``.env`` anyway, and one written in ``.env`` outside the
block is not written again (both are reported as kept).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_service.config import Settings

HEADROOM = 1.5
MINIMUM_MS = {"embed": 100.0, "retrieve": 50.0, "first_token": 500.0, "generate": 1000.0}
QUEUE_SHARE = 0.25  # of the three stages, added to the total for waiting in admission's queue
BLOCK_START = "# >>> rag-service calibrate"
BLOCK_END = "# <<< rag-service calibrate"
FINGERPRINT = "# fingerprint:"
ENV_NAMES = {
    "embed": "RAG_BUDGET__EMBED_MS",
    "retrieve": "RAG_BUDGET__RETRIEVE_MS",
    "first_token": "RAG_BUDGET__FIRST_TOKEN_MS",
    "generate": "RAG_BUDGET__GENERATE_MS",
    "total": "RAG_BUDGET__TOTAL_MS",
}
DEFAULT_RECORD = Path("reports") / "calibration.json"


def round_up(ms: float) -> float:
    """Up to two significant digits: 87.2 -> 88, 1234 -> 1300, 0.4 -> 0.4."""
    if ms <= 0:
        return 0.0
    step = 10 ** (math.floor(math.log10(ms)) - 1)
    return float(round(math.ceil(ms / step - 1e-9) * step, 6))


def propose(
    p99_ms: dict[str, float], reply_reserve_ms: float, headroom: float = HEADROOM
) -> dict[str, float]:
    """Budgets for the stages from their measured p99 (see the module's rule)."""
    out = {
        stage: round_up(max(p99_ms.get(stage, 0.0) * headroom, floor)) for stage, floor in MINIMUM_MS.items()
    }
    out["generate"] = max(out["generate"], out["first_token"])  # the first token is part of generating
    stages = out["embed"] + out["retrieve"] + out["generate"]
    out["total"] = round_up(stages * (1 + QUEUE_SHARE) + reply_reserve_ms)
    return out


def fingerprint(settings: Settings) -> str:
    """What the measurement depends on (the machine, the resolved dtype, the models and the request
    shape): ``calibrate --if-needed`` measures again when any of it changed."""
    from rag_service.runtime.hardware import cpu_features, cuda_bf16, cuda_devices, generator_dtype

    g, r = settings.generator, settings.retriever
    cpu = cpu_features()
    dtype = generator_dtype(g.dtype, gpus=cuda_devices(), gpu_bf16=cuda_bf16(), cpu=cpu).dtype
    parts = [
        cpu.model,
        cpu.isa,
        str(cpu.cores),
        g.model,
        dtype,
        settings.encoder.model,
        str(g.max_tokens),
        str(r.context_tokens),
        str(r.top_k),
        r.mode,
        str(settings.admission.max_in_flight),
    ]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _split(text: str) -> tuple[list[str], list[str]]:
    """``.env`` lines outside the calibration block, and inside it."""
    outside, inside, in_block = [], [], False
    for line in text.splitlines():
        if line.strip() == BLOCK_START or line.startswith(BLOCK_START + " "):
            in_block = True
        elif line.strip() == BLOCK_END:
            in_block = False
        elif in_block:
            inside.append(line)
        else:
            outside.append(line)
    return outside, inside


def _assigned(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        match = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if match:
            names.add(match.group(1).upper())
    return names


def calibrated_fingerprint(env_file: Path) -> str | None:
    if not env_file.is_file():
        return None
    _, inside = _split(env_file.read_text())
    for line in inside:
        if line.startswith(FINGERPRINT):
            return line[len(FINGERPRINT) :].strip()
    return None


def explicit_budgets(env_file: Path) -> dict[str, str]:
    """Budget variables set by hand: in the environment (``environment``) or ``.env`` outside the block."""
    out = {}
    outside = _assigned(_split(env_file.read_text())[0]) if env_file.is_file() else set()
    for stage, name in ENV_NAMES.items():
        if name in os.environ:
            out[stage] = "environment"
        elif name in outside:
            out[stage] = ".env"
    return out


def budget_sources(env_file: Path = Path(".env")) -> dict[str, str]:
    """Where each budget in force came from: environment, .env, calibrated (.env's block) or default."""
    explicit = explicit_budgets(env_file)
    inside = _assigned(_split(env_file.read_text())[1]) if env_file.is_file() else set()
    return {
        stage: explicit.get(stage) or ("calibrated" if name in inside else "default")
        for stage, name in ENV_NAMES.items()
    }


def write_env_block(env_file: Path, budgets: dict[str, float], header: list[str]) -> list[str]:
    """Writes (or rewrites) the calibration block of ``env_file``; returns the budgets kept as set by
    hand. The file is replaced atomically, the lines outside the block unchanged."""
    explicit = explicit_budgets(env_file)
    outside = _split(env_file.read_text())[0] if env_file.is_file() else []
    while outside and not outside[-1].strip():
        outside.pop()
    block = [BLOCK_START, *header]
    for stage, name in ENV_NAMES.items():
        if stage not in explicit:
            block.append(f"{name}={budgets[stage]:g}")
    block.append(BLOCK_END)
    text = "\n".join([*outside, *([""] if outside else []), *block]) + "\n"
    tmp = env_file.with_name(env_file.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(env_file)
    return sorted(explicit)


@dataclass
class Calibration:
    """What ``calibrate`` measured and proposed (also written as JSON for ``doctor``)."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    single: dict[str, Any]
    concurrent: dict[str, Any]
    p99_ms: dict[str, float]
    proposed_ms: dict[str, float]
    kept: list[str]
    at: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def env_header(result: Calibration, print_id: str) -> list[str]:
    m = result.machine
    dtype = m.get("dtypes", {}).get("generator", {}).get("dtype", "?")
    p99 = ", ".join(f"{s} {v:.0f}" for s, v in result.p99_ms.items())
    return [
        f"# {result.at} on {m.get('cpu', '?')} ({m.get('isa', '?')}, {m.get('cores', '?')} cores), "
        f"generator {dtype}; {result.settings['max_in_flight']} at once, "
        f"{result.settings['max_tokens']} tokens",
        f"# measured p99 ms: {p99}; budgets = {result.settings['headroom']:g}x p99 (README: Latency budgets)",
        f"{FINGERPRINT} {print_id}",
    ]


def write_record(path: Path, result: Calibration) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=2) + "\n")


def read_record(path: Path = DEFAULT_RECORD) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data
