"""Shared fixtures; the helpers they use live in ``tests/support``. Everything is real: the MiniLM
encoder, FAISS, the SmolLM2 tokenizer and, for the live tests, a uvicorn server running vLLM on the CPU
(started once per test session).

Markers mean what they say: every test that starts vLLM is marked ``vllm`` (``make test-fast`` runs the
rest). Tests that use the ``live_server`` fixture, or whose module starts a server or an engine itself
(``start_server``, ``VllmGenerator``), get the marker here, automatically."""

from __future__ import annotations

import inspect
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rag_service.config import Settings
from rag_service.generation.model_prep import is_prepared
from rag_service.index.snapshot import index_state
from tests.support.paths import GENERATOR_DIR, repo_settings
from tests.support.server import (
    LOOSE_BUDGETS,
    LiveServer,
    check_clean_shutdown,
    start_server,
    wait_until_started,
)

STARTS_VLLM = ("start_server(", "server_of_its_own(", "VllmGenerator")


def _starts_vllm(item: pytest.Item) -> bool:
    if "live_server" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        return False
    return any(marker in source for marker in STARTS_VLLM)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``vllm`` on every test that starts vLLM; tests marked ``gpu`` run only where torch and FAISS
    both see a CUDA device."""
    for item in items:
        if item.get_closest_marker("vllm") is None and _starts_vllm(item):
            item.add_marker(pytest.mark.vllm)
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    from rag_service.runtime.hardware import cuda_devices, faiss_gpus

    if cuda_devices() and faiss_gpus():
        return
    skip = pytest.mark.skip(reason="no CUDA device seen by torch and FAISS here (CPU builds, or no GPU)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def settings() -> Settings:
    if not is_prepared(GENERATOR_DIR):
        pytest.fail(f"generator weights missing at {GENERATOR_DIR}: run `make test` (it prepares them)")
    return repo_settings()


@pytest.fixture(scope="session")
def encoder(settings: Settings):
    from rag_service.embedding.encoder import Encoder

    return Encoder(settings.encoder)


@pytest.fixture(scope="session")
def prompts(settings: Settings):
    from rag_service.prompting.prompt import PromptBuilder

    return PromptBuilder.from_model(settings.generator.model, settings.generator.rag_instruction)


@pytest.fixture(scope="session")
def default_index_dir(settings: Settings) -> Path:
    folder = settings.index_path
    if index_state(folder) != "ready":
        pytest.fail(f"default index missing or outdated at {folder}: run `make test` (it builds it)")
    return folder


@pytest.fixture(scope="session")
def passages(settings: Settings, encoder: Any, prompts: Any, default_index_dir: Path) -> Iterator[Any]:
    """The passage search over the default index (read only: tests that write copy the index)."""
    from rag_service.index.live import LiveIndex
    from rag_service.retrieval.passages import PassageSearch

    live = LiveIndex.open(default_index_dir, encoder.index_spec(), settings.index)
    yield PassageSearch(live, prompts, settings.retriever)
    live.close()


@pytest.fixture(scope="session")
def live_server(
    settings: Settings, default_index_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """``rag-service serve`` in a subprocess on a free port: the real thing, vLLM included."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    # The server gets a copy of the default index: the documents API tests write to it.
    index_dir = tmp_path_factory.mktemp("indexes")
    shutil.copytree(default_index_dir, index_dir / settings.index.name)
    env = {
        "RAG_SERVER__MAX_BODY_BYTES": "65536",
        # Test-only: honour X-Rag-Fault-Delay (delays added around the real stages, for budget tests).
        "RAG_FAULTS__ENABLED": "true",
        **LOOSE_BUDGETS,
        "RAG_INGEST__MAX_BATCH_DOCS": "8",
        # The functional tests ask the same questions again and check what generation does; the
        # answer cache has a server of its own (tests/live/test_answer_cache.py).
        "RAG_CACHE__ENABLED": "false",
    }
    proc, url = start_server(settings, index_dir, log_path, env)
    try:
        r, saw_not_ready = wait_until_started(proc, url, log_path)
        if r.status_code != 200:
            pytest.fail(f"server failed to start: {r.json()}\n{log_path.read_text()[-4000:]}")
        yield LiveServer(url, log_path, saw_not_ready)
        # Every test is done: Ctrl-C must now stop the server cleanly (see _check_clean_shutdown).
        proc.send_signal(signal.SIGINT)
        check_clean_shutdown(proc, log_path, index_dir / settings.index.name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client of the live server."""
    with httpx.Client(base_url=live_server.url, timeout=120) as c:
        yield c
