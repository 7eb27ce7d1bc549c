"""What this machine is, and which device and dtype each component runs in on it.

The probes (``cpu_features``, ``cuda_devices``, ``faiss_gpus``) read the machine once; every choice is
a pure function of what was asked for and what the probes found, so the test suite checks every
branch (GPU, AVX-512 with native bf16, AVX2-only) on whatever machine it runs on.

Why dtype matters this much on a CPU: bfloat16 halves the bytes a token reads, but only CPUs that
execute it natively (AVX512_BF16 or AMX) gain from that. Elsewhere torch and oneDNN emulate it, and
an 800x576 @ 576x1536 product took 1,320 ms in bf16 against 88 ms in fp32 on an AVX2-only EPYC
(PLATFORM.md): the default service then answered nothing within its budgets.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

TorchDevice = Literal["cpu", "cuda"]
EncoderDtype = Literal["float32", "float16", "bfloat16"]
IndexBackend = Literal["hnsw", "flat", "gpu-flat"]

# The CPU flags (as /proc/cpuinfo names them) that decide what runs fast.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN (vLLM's and torch's CPU matrix products) honours ONEDNN_MAX_CPU_ISA; only these keep bf16 native.
ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")


@dataclass(frozen=True)
class CpuFeatures:
    """The machine as the dtype choices see it. ``torch_capability`` is what torch dispatches its own
    kernels for (``AVX2``, ``AVX512``, ...; ``ATEN_CPU_CAPABILITY`` lowers it), ``onednn_max_isa`` the
    ``ONEDNN_MAX_CPU_ISA`` cap, if any: both can make a bf16-capable CPU run bf16 emulated."""

    model: str = "unknown"
    flags: frozenset[str] = field(default_factory=frozenset)
    torch_capability: str = "unknown"
    onednn_max_isa: str | None = None
    cores: int = 1
    memory_gib: float = 0.0

    @property
    def native_bf16(self) -> bool:
        if not any(flag in self.flags for flag in NATIVE_BF16_FLAGS):
            return False
        if self.torch_capability.upper() in ("DEFAULT", "NO AVX", "AVX2"):
            return False  # torch dispatches to kernels without bf16 instructions
        isa = (self.onednn_max_isa or "ALL").upper()
        return isa.startswith(ONEDNN_BF16_ISAS)

    @property
    def isa(self) -> str:
        """A short name for the vector ISA: what a benchmark figure must be labelled with."""
        parts = [
            name
            for flag, name in (
                ("avx512f", "AVX-512"),
                ("avx512_bf16", "AVX512_BF16"),
                ("amx_bf16", "AMX"),
                ("avx512_vnni", "VNNI"),
            )
            if flag in self.flags
        ]
        if not parts:
            parts = ["AVX2" if "avx2" in self.flags else "no AVX2"]
        return "+".join(parts)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["flags"] = sorted(self.flags)
        out["isa"] = self.isa
        out["native_bf16"] = self.native_bf16
        return out


def _cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(f for f in value.split() if f in ISA_FLAGS)
    return model, flags


@lru_cache(maxsize=1)
def light_cpu_features() -> CpuFeatures:
    """The CPU without importing torch, for choices made while settings load: the flags from
    /proc/cpuinfo, torch's capability only as ``ATEN_CPU_CAPABILITY`` lowers it."""
    try:
        model, flags = _cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        model, flags = "unknown", frozenset()
    return CpuFeatures(
        model=model,
        flags=flags,
        torch_capability=os.environ.get("ATEN_CPU_CAPABILITY") or "unknown",
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
        cores=len(os.sched_getaffinity(0)),
    )


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once; imports torch, so call it after the heavy imports): the light
    probe plus what torch dispatches its kernels for and the memory."""
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        capability = "unknown"
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * page / 2**30, 1)
    except (ValueError, OSError):
        memory = 0.0
    return replace(light_cpu_features(), torch_capability=capability, memory_gib=memory)


def cuda_devices() -> int:
    """CUDA devices torch can use (0 with the CPU build of torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def cuda_bf16() -> bool:
    """Whether the first CUDA device computes in bf16 (Ampere and newer)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def nvidia_gpus() -> int:
    """NVIDIA GPUs the driver lists, without importing torch (0 without the driver)."""
    try:
        return sum(1 for _ in Path("/proc/driver/nvidia/gpus").iterdir())
    except OSError:
        return 0


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, which has no GPU functions)."""
    try:
        import faiss
    except ImportError:
        return 0
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why: logged at start, shown by ``/readyz`` and ``rag-service doctor``."""

    requested: str
    dtype: str
    reason: str

    def describe(self) -> dict[str, str]:
        return asdict(self)


# The generators `auto` chooses between, both prepared by `rag-service prepare-models`.
LARGE_GENERATOR = "models/qwen2.5-coder-1.5b-instruct"
SMALL_GENERATOR = "models/qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class GeneratorChoice:
    """The generator model ``auto`` resolved to and why (``/readyz``, ``rag-service doctor``)."""

    requested: str
    model: str
    reason: str

    def describe(self) -> dict[str, str]:
        return asdict(self)


def generator_model(requested: str, *, gpus: int, cpu: CpuFeatures) -> GeneratorChoice:
    """``auto``: the best reader measured (Qwen2.5-Coder-1.5B: a gold span in 66 % of SQuAD answers,
    against 40 % for the 0.5B model) where it runs in half precision, on a GPU or a CPU with native
    bf16; the 0.5B model on other CPUs, where the generator runs in fp32: there each 1.5B token reads
    6 GB of weights and an 800-token prefill is ~2.5 TFLOP (p99 8.2 s per answer in fp32 even on the
    AVX-512 CPU it was measured on, an estimated 16 s on two AVX2 cores; README, "Answer quality")."""
    if requested != "auto":
        return GeneratorChoice(requested, requested, "as configured")
    if gpus > 0:
        return GeneratorChoice(requested, LARGE_GENERATOR, "GPU: the 1.5B model runs in half precision")
    if cpu.native_bf16:
        reason = f"the CPU executes bf16 natively ({cpu.isa}): the 1.5B model runs in bf16"
        return GeneratorChoice(requested, LARGE_GENERATOR, reason)
    reason = f"no native bf16 on this CPU ({cpu.isa}): the 1.5B model would run in fp32, too slow"
    return GeneratorChoice(requested, SMALL_GENERATOR, reason)


def torch_device(requested: str, available_gpus: int) -> TorchDevice:
    """``auto`` takes the GPU when there is one; an explicit ``cuda`` without one is a clear error."""
    if requested == "auto":
        return "cuda" if available_gpus > 0 else "cpu"
    if requested.startswith("cuda"):
        if available_gpus == 0:
            raise ValueError(f"device {requested!r} requested but no CUDA device is available")
        return "cuda"
    if requested == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {requested!r}: use auto, cpu or cuda")


def _cpu_reason(cpu: CpuFeatures) -> str:
    if cpu.native_bf16:
        return f"the CPU executes bf16 natively ({cpu.isa}, torch {cpu.torch_capability})"
    if any(flag in cpu.flags for flag in NATIVE_BF16_FLAGS):
        return (
            f"the CPU has bf16 instructions but they are switched off (torch {cpu.torch_capability}, "
            f"ONEDNN_MAX_CPU_ISA={cpu.onednn_max_isa}): bf16 would be emulated"
        )
    return f"no native bf16 on this CPU ({cpu.isa}): emulated bf16 runs ~15x slower than fp32"


def encoder_dtype(requested: str, device: TorchDevice, cpu: CpuFeatures | None = None) -> DtypeChoice:
    """``auto``: fp16 on a GPU (tensor cores; cosine to fp32 above 0.999); on the CPU bf16 where it is
    native (1.6x faster for one question, 2.2x for a batch of 32 on an AMX Xeon; cosine 0.9999), fp32
    elsewhere."""
    if requested == "auto":
        if device == "cuda":
            return DtypeChoice(requested, "float16", "GPU: half precision on tensor cores")
        cpu = cpu or cpu_features()
        return DtypeChoice(requested, "bfloat16" if cpu.native_bf16 else "float32", _cpu_reason(cpu))
    if requested in ("float32", "float16", "bfloat16"):
        if requested == "float16" and device == "cpu":
            raise ValueError("float16 on the CPU is slow and imprecise: use float32 or bfloat16")
        return DtypeChoice(requested, requested, _explicit_reason(requested, device == "cuda", cpu))
    raise ValueError(f"unknown encoder dtype {requested!r}")


GENERATOR_DTYPES = {"half": "float16", "float": "float32"}  # vLLM's aliases


def generator_dtype(
    requested: str, *, gpus: int, gpu_bf16: bool = False, cpu: CpuFeatures | None = None
) -> DtypeChoice:
    """``auto``: on a GPU bf16 where the device computes it (else fp16); on the CPU bf16 only where it
    is native, fp32 otherwise. Never vLLM's own ``auto``, which takes the checkpoint's dtype (bf16
    for SmolLM2) whatever the machine."""
    if requested == "auto":
        if gpus > 0:
            if gpu_bf16:
                return DtypeChoice(requested, "bfloat16", "GPU with bf16 support")
            return DtypeChoice(requested, "float16", "GPU without bf16 support: float16")
        cpu = cpu or cpu_features()
        return DtypeChoice(requested, "bfloat16" if cpu.native_bf16 else "float32", _cpu_reason(cpu))
    dtype = GENERATOR_DTYPES.get(requested, requested)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"unknown generator dtype {requested!r}")
    return DtypeChoice(requested, dtype, _explicit_reason(dtype, gpus > 0, cpu))


def _explicit_reason(dtype: str, on_gpu: bool, cpu: CpuFeatures | None) -> str:
    if dtype == "bfloat16" and not on_gpu and not (cpu or cpu_features()).native_bf16:
        return "set explicitly, although bf16 is emulated on this CPU (expect it to be many times slower)"
    return "set explicitly"


def index_backend(requested: str, available_gpus: int) -> IndexBackend:
    """``auto``: exact flat search on the GPU when faiss-gpu sees one (FAISS has no HNSW on GPUs), else
    HNSW on the CPU. ``flat`` is exact search on the CPU (small corpora, reference runs)."""
    if requested == "auto":
        return "gpu-flat" if available_gpus > 0 else "hnsw"
    if requested == "gpu-flat":
        if available_gpus == 0:
            raise ValueError("index backend 'gpu-flat' requested but FAISS sees no GPU (faiss-cpu?)")
        return "gpu-flat"
    if requested in ("hnsw", "flat"):
        return requested  # type: ignore[return-value]
    raise ValueError(f"unknown index backend {requested!r}: use auto, hnsw, flat or gpu-flat")
