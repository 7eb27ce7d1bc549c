"""The heavy libraries, imported once, in a fixed order, on one thread, before anything runs in parallel.

transformers resolves its names lazily (``transformers.PreTrainedConfig`` imports a submodule on first
use), and that lazy module is not safe to import from two threads at once: one service start in three
failed with ``ImportError: cannot import name 'PreTrainedConfig' from 'transformers'`` in
``vllm.engine.arg_utils`` while the retrieval thread was importing sentence-transformers
(PLATFORM.md). Everything the encoder, the tokenizer and vLLM's engine start import is imported here
first, under one lock, so the threads that load them later find every module already complete.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
import time

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_DONE = False

# In dependency order: torch under transformers under sentence-transformers and vLLM.
MODULES = (
    "torch",
    "transformers",
    "sentence_transformers",
    "vllm",
    "vllm.engine.arg_utils",
    "vllm.v1.engine.async_llm",
    "vllm.sampling_params",
    "vllm.inputs",
)
# The ONNX encoder backends (opt-in, ~1 s to import): the runtime, and what an export on first use needs.
ONNX_MODULES = ("onnx", "onnxruntime", "onnxruntime.quantization", "onnxruntime.transformers.optimizer")
# Lazy names of transformers that the encoder, the prompt tokenizer and vLLM's engine start resolve.
TRANSFORMERS_NAMES = (
    "PreTrainedConfig",
    "PretrainedConfig",
    "PreTrainedModel",
    "PreTrainedTokenizerBase",
    "AutoConfig",
    "AutoModel",
    "AutoTokenizer",
    "GenerationConfig",
    "BertModel",
    "BertConfig",
    "LlamaConfig",
)


def import_heavy_libraries(*, onnx: bool = False) -> float:
    """Imports every module and lazy name above (idempotent, thread-safe); returns the seconds spent."""
    global _DONE
    started = time.perf_counter()
    with _LOCK:
        if _DONE:
            return 0.0
        for name in (*MODULES, *(ONNX_MODULES if onnx else ())):
            try:
                importlib.import_module(name)
            except ImportError as exc:  # an optional part (vLLM on a machine without it): say so
                log.warning("could not import %s: %s", name, exc)
        try:
            transformers = importlib.import_module("transformers")
        except ImportError:
            transformers = None
        for attr in TRANSFORMERS_NAMES if transformers is not None else ():
            # A name this transformers release lacks is no error: nothing here would then use it.
            with contextlib.suppress(AttributeError, ImportError):
                getattr(transformers, attr)
        _DONE = True
    seconds = time.perf_counter() - started
    log.info("heavy libraries imported in %.1f s (one thread)", seconds)
    return seconds
