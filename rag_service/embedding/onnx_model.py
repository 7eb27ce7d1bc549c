"""An exported sentence encoder run by ONNX Runtime: the ``onnx`` and ``onnx-int8`` encoder backends.

Tokenization is the model's own Hugging Face tokenizer with sentence-transformers' arguments (pad to
the longest text, truncate at ``max_seq_length``); pooling and normalization are inside the graph
(see ``onnx_export``). Bulk encoding sorts texts by length first, as sentence-transformers does, so a
batch pads to similar lengths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rag_service.embedding.onnx_export import MODEL_FILE, OUTPUT, read_manifest

log = logging.getLogger(__name__)


class OnnxSentenceModel:
    def __init__(self, folder: Path, model_path: Path, *, num_threads: int = 0) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        manifest = read_manifest(folder)
        if manifest is None:
            raise ValueError(f"{folder} holds no ONNX export: run `rag-service prepare-models`")
        self.manifest: dict[str, Any] = manifest
        self.folder = folder
        self.dimension = int(manifest["dimension"])
        self.max_seq_length = int(manifest["max_seq_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if num_threads:
            options.intra_op_num_threads = num_threads
        # Worker threads that spin between operators steal the cores vLLM is generating on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="np",
        )
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in self._inputs}

    def encode(self, texts: list[str], *, batch_size: int, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first, like s-t
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="Batches", unit="batch")
        for start in starts:
            rows = order[start : start + batch_size]
            (vectors,) = self._session.run([OUTPUT], self.tokenize([texts[i] for i in rows]))
            out[rows] = vectors
        return out
