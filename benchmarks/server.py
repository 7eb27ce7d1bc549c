"""A rag-service server for a benchmark or load test: the one at ``url`` if it answers, else a new
``rag-service serve`` subprocess on 127.0.0.1 that is stopped afterwards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import psutil

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 900


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _readiness(url: str) -> str | None:
    """``/readyz``'s status field (``loading``, ``ready``, ``failed``...), None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return None
    return str(status) if status is not None else None


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of a live process and its descendants, read while they run (a server's vLLM engine
    core and worker are its children; they are not reaped into anyone's RUSAGE_CHILDREN as it stops)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    url: str | None, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes] | None]]:
    """Yields (base url, the process we started or None). ``url=None`` always starts a fresh server
    on a free port (with ``env`` added to its environment, e.g. another index)."""
    if url and http_status(f"{url}/healthz") == 200:
        _wait_ready(url, None, log_path)
        yield url.rstrip("/"), None
        return
    parsed = urlparse(url or f"http://127.0.0.1:{free_port()}")
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"nothing answers at {url}, and a server is only started on 127.0.0.1")
    base = f"http://127.0.0.1:{parsed.port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a server at {base} (log: {log_path})", flush=True)
    full_env = {
        # The benchmarks time generation, and some ask a question more than once: the answer cache
        # would answer those in milliseconds. benchmarks.answer_cache turns it on to measure it.
        "RAG_CACHE__ENABLED": "false",
        **os.environ,
        **(env or {}),
        "RAG_SERVER__HOST": "127.0.0.1",
        "RAG_SERVER__PORT": str(parsed.port),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag_service.cli", "serve"],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(base, proc, log_path)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path) -> None:
    started = time.monotonic()
    while http_status(f"{url}/readyz") != 200:
        if _readiness(url) == "failed":  # a start that failed for good (a bad setting): stop waiting
            raise SystemExit(f"the server at {url} failed to start; see {log_path}")
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log_path}")
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise SystemExit(f"the server at {url} was not ready after {READY_TIMEOUT_S} s; see {log_path}")
        time.sleep(1)
    print(f"server ready at {url} after {time.monotonic() - started:.0f} s", flush=True)
