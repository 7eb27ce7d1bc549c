"""Device selection: the GPU branches are chosen by pure functions, checked here without a GPU; the
tests marked ``gpu`` run the real thing and are skipped where no CUDA device exists."""

from __future__ import annotations

import numpy as np
import pytest

from rag_service.config import EncoderSettings, GeneratorSettings
from rag_service.embedding.encoder import Encoder
from rag_service.runtime import preload
from rag_service.runtime.hardware import (
    CpuFeatures,
    cpu_features,
    cuda_devices,
    encoder_dtype,
    faiss_gpus,
    generator_dtype,
    generator_model,
    index_backend,
    light_cpu_features,
    torch_device,
)

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


# The machine kinds this project has run on: AMD EPYC Zen 4 (AVX-512 with bf16), AMD EPYC Zen 3 (AVX2
# only: emulated bf16 ran 15x slower), an AMX Xeon, and that Xeon with torch/oneDNN capped at AVX2.
ZEN4 = CpuFeatures(
    model="AMD EPYC Zen 4",
    flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}),
    torch_capability="AVX512",
)
ZEN3 = CpuFeatures(model="AMD EPYC Zen 3", flags=frozenset({"avx2", "fma"}), torch_capability="AVX2")
XEON_AMX = CpuFeatures(
    model="Xeon", flags=frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), torch_capability="AVX512"
)
XEON_CAPPED = CpuFeatures(
    model="Xeon",
    flags=XEON_AMX.flags,
    torch_capability="AVX2",  # ATEN_CPU_CAPABILITY=avx2
    onednn_max_isa="AVX2",
)


@pytest.mark.parametrize(
    ("cpu", "native"),
    [(ZEN4, True), (ZEN3, False), (XEON_AMX, True), (XEON_CAPPED, False)],
)
def test_native_bf16_needs_the_instructions_and_kernels_that_use_them(cpu: CpuFeatures, native: bool) -> None:
    assert cpu.native_bf16 is native
    choice = generator_dtype("auto", gpus=0, cpu=cpu)
    assert choice.dtype == ("bfloat16" if native else "float32")
    assert choice.reason  # logged, shown by /readyz and doctor
    assert encoder_dtype("auto", "cpu", cpu).dtype == ("bfloat16" if native else "float32")


@pytest.mark.parametrize(
    ("cpu", "gpus", "expected"),
    [
        (ZEN4, 0, "models/qwen2.5-coder-1.5b-instruct"),
        (XEON_AMX, 0, "models/qwen2.5-coder-1.5b-instruct"),
        (ZEN3, 0, "models/qwen2.5-coder-0.5b-instruct"),
        (XEON_CAPPED, 0, "models/qwen2.5-coder-0.5b-instruct"),
        (ZEN3, 1, "models/qwen2.5-coder-1.5b-instruct"),
    ],
)
def test_auto_generator_is_the_large_reader_only_where_it_runs_in_half_precision(
    cpu: CpuFeatures, gpus: int, expected: str
) -> None:
    choice = generator_model("auto", gpus=gpus, cpu=cpu)
    assert (choice.requested, choice.model) == ("auto", expected) and choice.reason
    assert generator_model("models/mine", gpus=gpus, cpu=cpu).model == "models/mine"


def test_settings_resolve_auto_generator_on_this_machine_without_torch() -> None:
    cpu = light_cpu_features()
    assert cpu.flags == cpu_features().flags  # the light probe reads the same CPU flags
    settings = GeneratorSettings()
    assert settings.model_choice.requested == "auto" and settings.model != "auto"
    assert settings.model == generator_model("auto", gpus=cuda_devices(), cpu=cpu_features()).model
    mine = GeneratorSettings(model="models/smollm2-135m-instruct")
    assert mine.model_choice.model == mine.model and mine.model_choice.reason == "as configured"


def test_onednn_capped_below_bf16_makes_bf16_emulated() -> None:
    capped = CpuFeatures(flags=XEON_AMX.flags, torch_capability="AVX512", onednn_max_isa="AVX512_CORE_VNNI")
    assert not capped.native_bf16
    amx = CpuFeatures(flags=XEON_AMX.flags, torch_capability="AVX512", onednn_max_isa="avx512_core_amx")
    assert amx.native_bf16


def test_generator_dtype_on_gpus_and_explicit_choices() -> None:
    assert generator_dtype("auto", gpus=1, gpu_bf16=True).dtype == "bfloat16"
    assert generator_dtype("auto", gpus=1, gpu_bf16=False).dtype == "float16"
    assert generator_dtype("float", gpus=0, cpu=ZEN3).dtype == "float32"  # vLLM's alias
    explicit = generator_dtype("bfloat16", gpus=0, cpu=ZEN3)
    assert explicit.dtype == "bfloat16" and "emulated" in explicit.reason  # allowed, but said
    assert generator_dtype("bfloat16", gpus=0, cpu=ZEN4).reason == "set explicitly"
    with pytest.raises(ValueError, match="unknown generator dtype"):
        generator_dtype("int3", gpus=0, cpu=ZEN4)


def test_isa_names_label_benchmark_figures() -> None:
    assert ZEN3.isa == "AVX2"
    assert ZEN4.isa == "AVX-512+AVX512_BF16+VNNI"
    assert XEON_AMX.isa == "AVX-512+AVX512_BF16+AMX"


def test_this_machine_is_read() -> None:
    cpu = cpu_features()
    assert cpu.cores >= 1 and cpu.memory_gib > 0
    assert cpu.torch_capability != "unknown"
    assert cpu.describe()["native_bf16"] is cpu.native_bf16


@pytest.mark.parametrize(
    ("requested", "device", "expected"),
    [("auto", "cuda", "float16"), ("bfloat16", "cpu", "bfloat16"), ("float32", "cuda", "float32")],
)
def test_encoder_dtype_selection(requested: str, device: str, expected: str) -> None:
    assert encoder_dtype(requested, device).dtype == expected  # type: ignore[arg-type]


def test_float16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="float16"):
        encoder_dtype("float16", "cpu")


def test_probes_agree_with_this_machine() -> None:
    import torch

    assert cuda_devices() == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert faiss_gpus() >= 0


def test_auto_encoder_runs_where_the_probe_says(encoder: Encoder) -> None:
    """auto: sentence-transformers, in float16 on a GPU, on the CPU in bf16 where native."""
    assert encoder.device == ("cuda" if HAS_CUDA else "cpu")
    expected = "float16" if HAS_CUDA else ("bfloat16" if cpu_features().native_bf16 else "float32")
    assert (encoder.backend, encoder.dtype) == ("torch", expected)


def test_half_precision_encoder_stays_close_and_normalized() -> None:
    """bfloat16 on the CPU (the same code path as float16 on a GPU): unit vectors, cosine >= 0.99."""

    full = Encoder(EncoderSettings(device="cpu", dtype="float32"))
    half = Encoder(EncoderSettings(device="cpu", dtype="bfloat16"))
    texts = ["The pass statement does nothing.", "Lambda expressions create anonymous functions."]
    a, b = full.encode_passages(texts), half.encode_passages(texts)
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


def test_preload_is_skipped_when_off_or_a_library_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert preload.wanted(GeneratorSettings(preload_libraries=False)) is None
    assert "off" in preload.preload_state(GeneratorSettings(preload_libraries=False))
    monkeypatch.setattr(preload, "tcmalloc", lambda: None)
    assert preload.wanted(GeneratorSettings()) is None
    assert "apt-get install libtcmalloc-minimal4" in preload.preload_state(GeneratorSettings())
