"""The models this server serves under the OpenAI API: their names, ``/v1/models`` cards, the check."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from rag_service.config import Settings
from rag_service.errors import ModelNotFound

OWNER = "rag-service"
_STARTED = int(time.time())


@lru_cache(maxsize=8)
def _served_name(model: str) -> str:
    """A local checkpoint folder is served under its folder name, a hub id as itself."""
    return Path(model).name if Path(model).is_dir() else model


def chat_model(settings: Settings) -> str:
    return _served_name(settings.generator.model)


def embedding_model(settings: Settings) -> str:
    return _served_name(settings.encoder.model)


def check_model(requested: str, served: str, configured: str) -> str:
    if requested not in (served, configured):
        raise ModelNotFound(
            f"The model `{requested}` does not exist: this endpoint serves `{served}` (see GET /v1/models)",
            param="model",
        )
    return served


def model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": OWNER}


def served_models(settings: Settings) -> list[tuple[str, str]]:
    """(served name, configured name) of the generator and of the encoder."""
    return [
        (chat_model(settings), settings.generator.model),
        (embedding_model(settings), settings.encoder.model),
    ]
