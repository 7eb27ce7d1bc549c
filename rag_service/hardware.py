"""Which device each component runs on: the GPU where one is usable, the CPU otherwise.

Every choice is a pure function of what was asked for and what is present, so the CPU test suite can
check the GPU branches without a GPU. The probes (``cuda_devices``, ``faiss_gpus``) import torch/faiss
lazily and answer 0 when the library or the device is missing.
"""

from __future__ import annotations

from typing import Literal

TorchDevice = Literal["cpu", "cuda"]
EncoderDtype = Literal["float32", "float16", "bfloat16"]
IndexBackend = Literal["hnsw", "flat", "gpu-flat"]


def cuda_devices() -> int:
    """CUDA devices torch can use (0 with the CPU build of torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def faiss_gpus() -> int:
    """GPUs FAISS can use (0 with faiss-cpu, which has no GPU functions)."""
    try:
        import faiss
    except ImportError:
        return 0
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


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


def encoder_dtype(requested: str, device: TorchDevice) -> EncoderDtype:
    """``auto``: fp16 on a GPU (tensor cores; embeddings' cosine to fp32 stays above 0.999), fp32 on the
    CPU (bf16 is faster only on CPUs with AVX512-BF16, so it is opt-in there)."""
    if requested == "auto":
        return "float16" if device == "cuda" else "float32"
    if requested in ("float32", "float16", "bfloat16"):
        if requested == "float16" and device == "cpu":
            raise ValueError("float16 on the CPU is slow and imprecise: use float32 or bfloat16")
        return requested  # type: ignore[return-value]
    raise ValueError(f"unknown encoder dtype {requested!r}")


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
