"""Shared fixtures. Everything is real: the MiniLM encoder, FAISS, the SmolLM2 tokenizer and, for the
API tests, a live uvicorn server running vLLM on the CPU (started once per test session)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag_service.config import GeneratorSettings, IndexSettings, Settings
from rag_service.generation.model_prep import is_prepared
from rag_service.index.snapshot import index_state, read_manifest
from rag_service.storage.store import DocumentStore

REPO = Path(__file__).resolve().parents[1]
# Hermetic settings: a developer's .env (calibrated budgets from `make run`, edits) must not change what
# the suite checks. Settings() in this process reads no .env, and servers start in an empty folder.
Settings.model_config["env_file"] = None
SHARED_DATA = Path(os.environ.get("RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
GENERATOR_DIR = REPO / "models" / "smollm2-135m-instruct"
SERVER_START_TIMEOUT_S = 420


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where torch and FAISS both see a CUDA device."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    from rag_service.runtime.hardware import cuda_devices, faiss_gpus

    if cuda_devices() and faiss_gpus():
        return
    skip = pytest.mark.skip(reason="no CUDA device seen by torch and FAISS here (CPU builds, or no GPU)")
    for item in gpu_tests:
        item.add_marker(skip)


def repo_settings() -> Settings:
    """Default settings with paths anchored at the repository, whatever the working directory."""
    return Settings(
        generator=GeneratorSettings(model=str(GENERATOR_DIR)), index=IndexSettings(dir=REPO / "indexes")
    )


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

    return PromptBuilder.from_model(settings.generator.model, settings.generator.system_prompt)


@pytest.fixture(scope="session")
def default_index_dir(settings: Settings) -> Path:
    folder = settings.index_path
    if index_state(folder) != "ready":
        pytest.fail(f"default index missing or outdated at {folder}: run `make test` (it builds it)")
    return folder


def scifact_dir() -> Path:
    folder = SHARED_DATA / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"shared evaluation data not found at {folder} (set RAG_SHARED_DATA to its folder)")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    log_path: Path
    saw_not_ready: bool

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# Budgets loose enough that functional tests do not time out or degrade when other work loads the
# machine; tests/test_budgets.py breaks budgets on purpose (added delays, tight deadlines).
LOOSE_BUDGETS = {
    "RAG_BUDGET__EMBED_MS": "2000",
    "RAG_BUDGET__RETRIEVE_MS": "1000",
    "RAG_BUDGET__FIRST_TOKEN_MS": "60000",
    "RAG_BUDGET__GENERATE_MS": "90000",
    "RAG_BUDGET__TOTAL_MS": "120000",
}


def start_server(
    settings: Settings, index_dir: Path, log_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``rag-service serve`` in a subprocess on a free port, serving ``index_dir``."""
    port = _free_port()
    full_env = {
        **os.environ,
        "RAG_SERVER__PORT": str(port),
        "RAG_GENERATOR__MODEL": settings.generator.model,
        "RAG_INDEX__DIR": str(index_dir),
        "RAG_INDEX__NAME": settings.index.name,
        **env,
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag_service.cli", "serve"],
            cwd=log_path.parent,  # no .env there (see above); every path it needs is absolute
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}"


def wait_until_started(
    proc: subprocess.Popen[bytes], url: str, log_path: Path
) -> tuple[httpx.Response, bool]:
    """Polls ``/readyz`` until the service is no longer starting; returns the last answer and whether
    a 503 ``starting`` was seen before it. A process that exits or never settles fails the test."""
    saw_not_ready = False
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        try:
            r = httpx.get(f"{url}/readyz", timeout=2)
            if r.json().get("status") != "starting":
                return r, saw_not_ready
            saw_not_ready = saw_not_ready or r.status_code == 503
        except httpx.TransportError:
            pass
        time.sleep(0.5)


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
    }
    proc, url = start_server(settings, index_dir, log_path, env)
    try:
        r, saw_not_ready = wait_until_started(proc, url, log_path)
        if r.status_code != 200:
            pytest.fail(f"server failed to start: {r.json()}\n{log_path.read_text()[-4000:]}")
        yield LiveServer(url, log_path, saw_not_ready)
        # Every test is done: Ctrl-C must now stop the server cleanly (see _check_clean_shutdown).
        proc.send_signal(signal.SIGINT)
        _check_clean_shutdown(proc, log_path, index_dir / settings.index.name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_clean_shutdown(proc: subprocess.Popen[bytes], log_path: Path, index: Path) -> None:
    """What an operator's Ctrl-C (or ``docker stop``, SIGTERM: the same shutdown) relies on: the
    process ends within the grace period, by the signal (uvicorn re-raises it once shut down), after a
    last snapshot of everything applied (the next start replays nothing), with nothing alarming
    printed on the way out: no traceback, and no native extension complaining of "leaked" objects,
    which it does at interpreter exit for objects still frozen out of garbage collection (gc_pauses)."""
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running 60 s after Ctrl-C:\n{log_path.read_text()[-4000:]}")
    log = log_path.read_text(errors="replace")
    tail = log[log.rfind("Waiting for application shutdown") :]
    assert code in (0, -signal.SIGINT, 128 + signal.SIGINT), f"server exited with {code}:\n{tail[-4000:]}"
    assert "Application shutdown complete" in tail, tail[-4000:]
    assert "leaked" not in tail and "Traceback" not in tail, tail[-4000:]
    store = DocumentStore.open(index)
    try:
        assert read_manifest(index)["applied_seq"] == store.last_seq(), "no last snapshot at shutdown"
    finally:
        store.close()
