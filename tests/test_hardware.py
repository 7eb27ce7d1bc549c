"""Device selection: the GPU branches are chosen by pure functions, checked here without a GPU; the
tests marked ``gpu`` run the real thing and are skipped where no CUDA device exists."""

from __future__ import annotations

import numpy as np
import pytest

from rag_service.config import EncoderSettings
from rag_service.encoder import Encoder
from rag_service.hardware import cuda_devices, encoder_dtype, faiss_gpus, index_backend, torch_device

HAS_CUDA = cuda_devices() > 0


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [("auto", 0, "cpu"), ("auto", 1, "cuda"), ("auto", 8, "cuda"), ("cpu", 4, "cpu"), ("cuda", 1, "cuda")],
)
def test_torch_device_selection(requested: str, gpus: int, expected: str) -> None:
    assert torch_device(requested, gpus) == expected


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        torch_device("cuda", 0)
    with pytest.raises(ValueError, match="unknown device"):
        torch_device("tpu", 1)


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [
        ("auto", "cuda", "float16"),
        ("auto", "cpu", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
        ("float32", "cuda", "float32"),
    ],
)
def test_encoder_dtype_selection(requested: str, device: str, expected: str) -> None:
    assert encoder_dtype(requested, device) == expected  # type: ignore[arg-type]


def test_float16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        encoder_dtype("float16", "cpu")


def test_probes_agree_with_this_machine() -> None:
    import torch

    assert cuda_devices() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert faiss_gpus() >= 0


def test_auto_encoder_runs_where_the_probe_says(encoder: Encoder) -> None:
    assert encoder.device == ("cuda" if HAS_CUDA else "cpu")
    assert encoder.dtype == ("float16" if HAS_CUDA else "float32")


def test_half_precision_encoder_stays_close_and_normalized(encoder: Encoder) -> None:
    """bfloat16 on the CPU (the same code path as float16 on a GPU): unit vectors, cosine >= 0.99."""

    half = Encoder(EncoderSettings(device="cpu", dtype="bfloat16"))
    texts = ["The pass statement does nothing.", "Lambda expressions create anonymous functions."]
    a, b = encoder.encode_passages(texts), half.encode_passages(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.99


@pytest.mark.gpu
def test_encoder_on_cuda_in_float16_matches_the_cpu(encoder: Encoder) -> None:

    cuda = Encoder(EncoderSettings(device="cuda"))
    assert cuda.dtype == "float16"
    texts = ["What does the assert statement do?"] * 3
    assert (cuda.encode_queries(texts) * encoder.encode_queries(texts)).sum(axis=1).min() > 0.999


@pytest.mark.parametrize(
    ("requested", "gpus", "expected"),
    [
        ("auto", 0, "hnsw"),
        ("auto", 1, "gpu-flat"),
        ("hnsw", 1, "hnsw"),
        ("flat", 0, "flat"),
        ("gpu-flat", 2, "gpu-flat"),
    ],
)
def test_index_backend_selection(requested: str, gpus: int, expected: str) -> None:
    assert index_backend(requested, gpus) == expected


def test_gpu_index_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no GPU"):
        index_backend("gpu-flat", 0)
    with pytest.raises(ValueError, match="unknown index backend"):
        index_backend("ivf", 1)


def test_this_machine_serves_hnsw_unless_faiss_sees_a_gpu() -> None:
    from rag_service.config import IndexSettings

    assert index_backend(IndexSettings().backend, faiss_gpus()) == ("gpu-flat" if faiss_gpus() else "hnsw")
