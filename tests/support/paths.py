"""Where things are, and the settings the suite runs with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag_service.config import GeneratorSettings, IndexSettings, Settings

REPO = Path(__file__).resolve().parents[2]
# Hermetic settings: a developer's .env (calibrated budgets from `make run`, edits) must not change what
# the suite checks. Settings() in this process reads no .env, and servers start in an empty folder.
Settings.model_config["env_file"] = None
SHARED_DATA = Path(os.environ.get("RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
GENERATOR_DIR = REPO / "models" / "smollm2-135m-instruct"


def repo_settings() -> Settings:
    """Default settings with paths anchored at the repository, whatever the working directory."""
    return Settings(
        generator=GeneratorSettings(model=str(GENERATOR_DIR)), index=IndexSettings(dir=REPO / "indexes")
    )


def scifact_dir() -> Path:
    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"shared evaluation data not found at {folder} (set RAG_SHARED_DATA to its folder)")
    return folder
