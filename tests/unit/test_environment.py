"""The installed environment: the torchvision breakage is fixed, and the HTTP layer imports light."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_transformers_llama_config_imports() -> None:
    # PyPI's torchvision beside the +cpu torch makes this fail with "Could not import module".
    result = _run("from transformers import LlamaConfig; print(LlamaConfig.model_type)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "llama"


def test_vllm_and_faiss_import() -> None:
    result = _run("import vllm, faiss; print(vllm.__version__, faiss.__version__)")
    assert result.returncode == 0, result.stderr[-2000:]


def test_api_import_does_not_load_heavy_libraries() -> None:
    code = (
        "import sys, rag_service.api, rag_service.cli; "
        "print(sorted(m for m in ('torch', 'vllm', 'faiss', 'sentence_transformers', 'transformers') "
        "if m in sys.modules))"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
