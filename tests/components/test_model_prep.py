"""The generator folder made by `rag-service prepare-models` (make test runs it before the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag_service.generation.model_prep import (
    GGUF_MEMBER,
    MANIFEST,
    WHEEL_REQUIREMENT,
    is_prepared,
    prepare_generator,
)
from tests.support.paths import GENERATOR_DIR


def test_prepared_folder_is_a_complete_checkpoint() -> None:
    assert is_prepared(GENERATOR_DIR)
    manifest = json.loads((GENERATOR_DIR / MANIFEST).read_text())
    assert manifest["source"]["requirement"] == WHEEL_REQUIREMENT
    assert manifest["source"]["member"] == GGUF_MEMBER
    assert len(manifest["gguf_sha256"]) == 64 and len(manifest["wheel_sha256"]) == 64
    assert manifest["converted_at"] and manifest["dtype"] == "bfloat16"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert name in manifest["files"]
    config = json.loads((GENERATOR_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config


def test_chat_template_came_along() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GENERATOR_DIR)
    text = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
    )
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_prepared_folder_is_left_alone() -> None:
    before = (GENERATOR_DIR / MANIFEST).stat().st_mtime
    prepare_generator(GENERATOR_DIR)
    assert (GENERATOR_DIR / MANIFEST).stat().st_mtime == before


def test_someone_elses_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not made by prepare-models"):
        prepare_generator(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"
