"""Start-up as an operator meets it: five cold starts in a row all reach ready (the heavy imports
never race), ``/readyz`` shows what the budget check measured next to each budget, and budgets the
machine cannot meet give 503 ``over_budget`` instead of a ready service that answers nothing.

Each test starts the real server (encoder, FAISS, vLLM) in a subprocess. Its start-up work is kept
small, so seven starts fit in a few minutes on 2 cores: short answers (``max_tokens`` 16), short prompts
(256 tokens of passages) and two questions at once in the warm-up's and the budget check's rounds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from rag_service.config import Settings
from rag_service.runtime import preload
from rag_service.runtime.readiness import STAGES
from tests.support.server import LOOSE_BUDGETS, QUICK_CHECK, start_server, stop_server, wait_until_started

pytestmark = pytest.mark.vllm
IN_FLIGHT = 2
SHORT = {
    **QUICK_CHECK,
    "RAG_RETRIEVER__CONTEXT_TOKENS": "256",
    "RAG_ADMISSION__MAX_IN_FLIGHT": str(IN_FLIGHT),
}
QUESTION = {"question": "What does the global statement do?"}


@pytest.fixture(scope="module")
def index_dir(settings: Settings, default_index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("startup-indexes")
    shutil.copytree(default_index_dir, folder / settings.index.name)
    return folder


def _start(
    settings: Settings, index_dir: Path, log: Path, env: dict[str, str]
) -> tuple[dict, str, subprocess.Popen]:
    proc, url = start_server(settings, index_dir, log, env)
    try:
        r, _ = wait_until_started(proc, url, log)
    except BaseException:
        stop_server(proc)
        raise
    body = r.json()
    assert r.status_code == (200 if body["status"] == "ready" else 503), body
    return body, url, proc


def test_five_cold_starts_in_a_row_all_reach_ready(
    settings: Settings, index_dir: Path, tmp_path: Path
) -> None:
    for n in range(5):
        log = tmp_path / f"start-{n}.log"
        body, url, proc = _start(settings, index_dir, log, {**LOOSE_BUDGETS, **SHORT})
        try:
            assert body["status"] == "ready", f"start {n + 1} of 5: {body}\n{log.read_text()[-4000:]}"
            check = body["budget_check"]
            assert check["within_budgets"] and check["concurrency"] == IN_FLIGHT
            assert check["answers"] == IN_FLIGHT
            assert check["max_tokens"] == int(QUICK_CHECK["RAG_GENERATOR__MAX_TOKENS"])
            assert set(check["measured_ms"]) == set(STAGES)  # every stage, next to its budget
            assert set(body["budgets_ms"]) == set(STAGES)
            assert body["budget_sources"]["first_token"] == "environment"
            assert body["dtypes"]["generator"]["dtype"] in ("bfloat16", "float32")
            assert body["dtypes"]["generator"]["reason"]
            answer = httpx.post(f"{url}/v1/ask", json=QUESTION, timeout=120).json()
            assert answer["answer"] and not answer["degraded"], answer
        finally:
            stop_server(proc)
        text = log.read_text()
        assert "ImportError" not in text
        if preload.wanted(settings.generator):  # both libraries are here: vLLM must find them loaded
            assert "libtcmalloc is not found in LD_PRELOAD" not in text
            assert "libiomp is not found in LD_PRELOAD" not in text


def test_budgets_the_machine_cannot_meet_are_not_ready_unless_accepted(
    settings: Settings, index_dir: Path, tmp_path: Path
) -> None:
    # No first token can arrive within 1 ms: the budget check must notice (twice) and refuse.
    impossible = {**LOOSE_BUDGETS, **SHORT, "RAG_BUDGET__FIRST_TOKEN_MS": "1"}
    body, url, proc = _start(settings, index_dir, tmp_path / "over.log", impossible)
    try:
        assert body["status"] == "over_budget", body
        assert "rag-service calibrate" in body["reason"] and "first_token" in body["reason"]
        check = body["budget_check"]
        assert not check["within_budgets"] and check["misses"]
        assert check["measured_ms"]["first_token"]["max"] > 1
        r = httpx.post(f"{url}/v1/ask", json=QUESTION, timeout=60)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "over_budget" and "calibrate" in error["message"]
    finally:
        stop_server(proc)
    # Accepted explicitly: ready, and it says so.
    body, url, proc = _start(
        settings,
        index_dir,
        tmp_path / "accepted.log",
        {**impossible, "RAG_BUDGET__ACCEPT_OVER_BUDGET": "true"},
    )
    try:
        assert body["status"] == "ready" and "over budget" in body["reason"], body
        assert not body["budget_check"]["within_budgets"]
        answer = httpx.post(f"{url}/v1/ask", json=QUESTION, timeout=60).json()
        assert answer["degraded"] and answer["degraded_reason"] == "first_token" and answer["sources"]
    finally:
        stop_server(proc)
