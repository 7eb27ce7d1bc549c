"""One-time export of a sentence-transformers encoder to ONNX, and its int8 quantization.

The graph is exported from the SentenceTransformer itself (transformer, pooling and normalization
modules together), so the ONNX model's output *is* the sentence embedding: pooling and normalization
cannot drift from sentence-transformers'. Tokenization stays in Python with the model's own tokenizer.

Recipe, chosen by measurement on 2026-12-02 (AMD EPYC Zen 4, 2 cores; BENCHMARKS.md, "Encoder backends"):
1. torch's TorchScript-based exporter (``dynamo=False``, opset 17) on eager attention: the dynamo
   exporter's graph ran a query 1.3x slower and its attention could not be fused;
2. ONNX Runtime's transformer optimizer fuses attention, embedding and skip layer norms (from the
   model's own head count and width): 1.3x the bulk throughput of the plain graph in float32;
3. ``onnx-int8``: dynamic quantization of that fused graph (int8 weights per output channel,
   activations quantized at run time). Against the alternatives on the same texts: static QDQ
   quantization (MinMax calibration on SciFact) fell to cosine 0.71-0.93 to float32; 8-bit
   weight-only MatMulNBits kept 0.9998 but ran a query 2.3x slower; dynamic quantization of the
   unfused graph was slower (26 vs 38 documents/s) and less close (min cosine 0.985 vs 0.991).
   Dynamic quantization scales activations per batch, so a text's vector moves slightly with its
   batch mates (cosine >= 0.988 measured); retrieval quality is measured through the service.

Each export folder holds ``model.onnx`` and ``manifest.json`` (source weights' hash, opset, library
versions, quantization); a folder whose manifest matches the source and recipe is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rag_service.generation.model_prep import sha256

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
OPSET = 17
RECIPE = 2  # bump when the export or quantization recipe changes: older exports are rebuilt
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"
# Files of a sentence-transformers folder that decide what the vectors are.
SOURCE_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class OnnxVariant:
    """``onnx`` (float32) or ``onnx-int8`` (dynamic int8)."""

    backend: str

    @property
    def quantized(self) -> bool:
        return self.backend == "onnx-int8"

    def quantization(self) -> dict[str, Any] | None:
        if not self.quantized:
            return None
        return {"method": "dynamic", "weights": "QInt8", "per_channel": True, "activations": "QUInt8"}


def source_hash(model_path: Path) -> str:
    """SHA-256 over the files that define the encoder (weights, config, pooling, tokenizer)."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        file = model_path / name
        if not file.is_file():
            continue
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def export_folder(root: Path, model_id: str, variant: OnnxVariant) -> Path:
    slug = model_id.strip("/").replace("/", "--")
    return root / f"{slug}--{variant.backend}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not (folder / MODEL_FILE).is_file():
        return None
    return manifest


def stale_reason(manifest: dict[str, Any] | None, model_path: Path, variant: OnnxVariant) -> str | None:
    """Why an existing export cannot be used (None: it can)."""
    if manifest is None:
        return "no export yet"
    if manifest.get("recipe") != RECIPE:
        return f"export recipe {manifest.get('recipe')} is not the current {RECIPE}"
    if manifest.get("backend") != variant.backend:
        return f"export is {manifest.get('backend')!r}, not {variant.backend!r}"
    if manifest.get("source_sha256") != source_hash(model_path):
        return "the source weights changed since the export"
    return None


def ensure_export(model_path: Path, model_id: str, root: Path, variant: OnnxVariant) -> Path:
    """The export folder for this model and variant, (re)built first when missing or stale."""
    folder = export_folder(root, model_id, variant)
    reason = stale_reason(read_manifest(folder), model_path, variant)
    if reason is None:
        return folder
    print(f"exporting encoder {model_id} to ONNX ({variant.backend}): {reason}", flush=True)
    export(model_path, model_id, folder, variant)
    return folder


def export(model_path: Path, model_id: str, folder: Path, variant: OnnxVariant) -> dict[str, Any]:
    """Export (and quantize) into a temporary folder beside ``folder``, then swap it in: a crash or a
    second process exporting at the same moment never leaves a half-written model behind."""
    import onnx
    import onnxruntime
    import torch
    from sentence_transformers import SentenceTransformer

    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        # Eager attention exports to plain MatMul/Softmax, which every ONNX Runtime build runs.
        st = SentenceTransformer(
            str(model_path), device="cpu", model_kwargs={"attn_implementation": "eager"}
        ).eval()
        steps = 3 if variant.quantized else 2
        exported, fused = staging / "exported.onnx", staging / "fused.onnx"
        print(f"  [1/{steps}] torch.onnx.export (opset {OPSET})", flush=True)
        _export_graph(st, exported)
        print(f"  [2/{steps}] ONNX Runtime transformer fusions", flush=True)
        fusions = _fuse(exported, fused, st)
        exported.unlink()
        if variant.quantized:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            print(f"  [3/{steps}] int8 dynamic quantization (per-channel weights)", flush=True)
            quantize_dynamic(
                fused,
                staging / MODEL_FILE,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # The fused operators are outside ONNX's shape inference: their outputs are float.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            fused.unlink()
        else:
            fused.rename(staging / MODEL_FILE)
        manifest = {
            "recipe": RECIPE,
            "backend": variant.backend,
            "source": model_id,
            "source_path": str(model_path),
            "source_sha256": source_hash(model_path),
            "model_sha256": sha256(staging / MODEL_FILE),
            "dimension": int(st.get_embedding_dimension() or 0),
            "max_seq_length": int(st.max_seq_length or 0),
            "opset": OPSET,
            "exporter": "torch.onnx.export (TorchScript-based, dynamo=False), eager attention",
            "fusions": fusions,
            "quantization": variant.quantization(),
            "versions": {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "sentence-transformers": metadata.version("sentence-transformers"),
            },
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        old = folder.with_name(f".{folder.name}-old-{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size_mb = (folder / MODEL_FILE).stat().st_size / 1e6
    print(
        f"  wrote {folder / MODEL_FILE} ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return manifest


def _export_graph(st: Any, out: Path) -> None:
    import torch

    class SentenceEmbedding(torch.nn.Module):
        """The SentenceTransformer's forward with positional tensors, as the exporter wants."""

        def __init__(self, model: Any, names: list[str]) -> None:
            super().__init__()
            self.model = model
            self.names = names

        def forward(self, *tensors: Any) -> Any:
            return self.model(dict(zip(self.names, tensors, strict=True)))[OUTPUT]

    sample = st.tokenizer(
        ["an example", "a second, longer example sentence"], padding=True, return_tensors="pt"
    )
    names = [name for name in INPUTS if name in sample]  # some tokenizers have no token_type_ids
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {OUTPUT: {0: "batch"}}
    # The tracer warns about shape checks it freezes (mask length == token count, no extra padding):
    # they hold for every tokenizer output, and tests compare the export with sentence-transformers.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            SentenceEmbedding(st, names),
            tuple(sample[name] for name in names),
            str(out),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
        )


def _fuse(source: Path, out: Path, st: Any) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    config = st[0].auto_model.config
    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
    model.save_model_to_file(str(out))
    return {op: n for op, n in model.get_fused_operator_statistics().items() if n}
