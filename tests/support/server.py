"""Servers for tests: ``rag-service serve`` in a subprocess (vLLM included), its clean stop, and an app
served in a thread without its lifespan (nothing loaded)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from rag_service.config import Settings
from rag_service.index.snapshot import read_manifest
from rag_service.storage.store import DocumentStore
from tests.support.paths import REPO

SERVER_START_TIMEOUT_S = 420


def free_port() -> int:
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
# machine; tests/live/test_budgets.py breaks budgets on purpose (added delays, tight deadlines).
LOOSE_BUDGETS = {
    "RAG_BUDGET__EMBED_MS": "2000",
    "RAG_BUDGET__RETRIEVE_MS": "1000",
    "RAG_BUDGET__FIRST_TOKEN_MS": "60000",
    "RAG_BUDGET__GENERATE_MS": "90000",
    "RAG_BUDGET__TOTAL_MS": "120000",
}


# For a server whose tests all say how many tokens they want: its start-up check (budget check and the
# answers' default length) generates only this many per question, so the start stays quick on 2 cores.
QUICK_CHECK = {"RAG_GENERATOR__MAX_TOKENS": "16"}


# The answer cache of the session's server is small, so the byte bound is reached within a test
# (tests/live/test_answer_cache.py) and the rest of the suite runs with evictions going on.
TEST_CACHE_MAX_BYTES = 32 * 1024


def start_server(
    settings: Settings, index_dir: Path, log_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str]:
    """``rag-service serve`` in a subprocess on a free port, serving ``index_dir``."""
    port = free_port()
    full_env = {
        **os.environ,
        "RAG_SERVER__PORT": str(port),
        "RAG_GENERATOR__MODEL": settings.generator.model,
        # The encoder's ONNX exports of the checkout (prepare-models), not a fresh export per server.
        "RAG_ENCODER__ONNX_DIR": str(REPO / "models" / "encoders"),
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


def check_clean_shutdown(proc: subprocess.Popen[bytes], log_path: Path, index: Path) -> None:
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


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread, without its lifespan: nothing is loaded."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def server_of_its_own(
    settings: Settings, default_index_dir: Path, folder: Path, env: dict[str, str]
) -> Iterator[LiveServer]:
    """A live server on a copy of the default index, for a module whose requests must not meet the
    shared ``live_server``'s (documents written by a fuzzer, answers kept by the cache)."""
    index_dir = folder / "indexes"
    shutil.copytree(default_index_dir, index_dir / settings.index.name)
    log_path = folder / "server.log"
    proc, url = start_server(settings, index_dir, log_path, {**LOOSE_BUDGETS, **env})
    try:
        r, saw_not_ready = wait_until_started(proc, url, log_path)
        if r.status_code != 200:
            pytest.fail(f"server failed to start: {r.json()}\n{log_path.read_text()[-4000:]}")
        yield LiveServer(url, log_path, saw_not_ready)
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, and a kill if it is still running a minute later."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
