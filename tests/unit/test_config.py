from __future__ import annotations

import pytest
from pydantic import ValidationError

from rag_service.config import Settings, render_env_example
from tests.support.paths import REPO


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RAG_"):
            monkeypatch.delenv(name)


def test_env_example_is_generated_from_settings() -> None:
    assert (REPO / ".env.example").read_text() == render_env_example(), (
        "`.env.example` drifted from Settings: run `rag-service env-example > .env.example`"
    )


def test_env_example_parses_back_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    from_file = Settings(_env_file=REPO / ".env.example")
    assert from_file == Settings(_env_file=None)


def test_every_field_is_described() -> None:
    for section, field in Settings.model_fields.items():
        if not isinstance(field.annotation, type):  # a top-level value such as api_key
            assert field.description, f"{section} has no description"
            continue
        for name, sub in field.annotation.model_fields.items():
            assert sub.description, f"{section}.{name} has no description"


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    assert Settings(_env_file=None).api_key is None
    monkeypatch.setenv("RAG_API_KEY", "")
    assert Settings(_env_file=None).api_key is None, "an empty RAG_API_KEY means no key"
    monkeypatch.setenv("RAG_API_KEY", "s3cret")
    key = Settings(_env_file=None).api_key
    assert key is not None and key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(Settings(_env_file=None)), "the key must not show up in logs"


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("RAG_INDEX__EF_SEARCH", "96")
    monkeypatch.setenv("RAG_SERVER__PORT", "9001")
    monkeypatch.setenv("RAG_GENERATOR__STOP", '["END"]')
    s = Settings(_env_file=None)
    assert s.index.ef_search == 96
    assert s.server.port == 9001
    assert s.generator.stop == ["END"]


def test_context_budget_must_fit_the_model() -> None:
    with pytest.raises(ValidationError, match="max_model_len"):
        Settings(_env_file=None, retriever={"context_tokens": 1800}, generator={"max_tokens_limit": 512})


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, server={"port": 0})
    with pytest.raises(ValidationError):
        Settings(_env_file=None, chunking={"chunk_tokens": 64, "overlap_tokens": 64})
