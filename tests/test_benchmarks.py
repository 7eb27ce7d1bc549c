"""Smoke runs of the benchmark scripts, so they keep working (figures are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, LiveServer, scifact_dir


def test_hnsw_params_benchmark_smoke(tmp_path: Path) -> None:
    data = scifact_dir()
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/hnsw_params.py",
            "--data",
            str(data),
            "--docs",
            "200",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "efSearch=64" in result.stdout
    rows = json.loads((tmp_path / "hnsw_params.json").read_text())["rows"]
    assert rows[0]["index"].startswith("exact") and len(rows) == 6
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in rows)


def test_query_batching_benchmark_smoke(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.query_batching",
            "--smoke",
            "--concurrency",
            "1",
            "8",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on/off ratios" in result.stdout
    report = json.loads((tmp_path / "query_batching.json").read_text())
    assert {(r["mode"], r["concurrency"]) for r in report["rows"]} == {
        (mode, c) for mode in ("on", "off", "direct") for c in (1, 8)
    }
    assert all(r["queries_per_s"] > 0 for r in report["rows"])


def test_overload_benchmark_smoke(tmp_path: Path, live_server: LiveServer) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.overload",
            "--smoke",
            "--url",
            live_server.url,
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "overload.json").read_text())
    burst = report["burst"]
    assert burst["admitted"] + burst["rejected_429"] == burst["burst"]
    assert burst["answered_200"] <= burst["admitted"]
    assert set(report["budgets_ms"]) == {"embed", "retrieve", "first_token", "generate", "total"}


def test_ingest_benchmark_smoke(tmp_path: Path) -> None:
    data = scifact_dir()
    command = [sys.executable, "benchmarks/ingest.py", "--data", str(data), "--docs", "24", "--batch", "8"]
    command += ["--idle-queries", "10", "--window", "1", "--out", str(tmp_path)]
    result = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's rag_service, not an installed one
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio ours / plain" in result.stdout
    figures = json.loads((tmp_path / "ingest.json").read_text())
    assert figures["docs"] == 24 and figures["chunks"] >= 24
    assert figures["ingest_docs_per_s"] > 0 and figures["plain_docs_per_s"] > 0
    assert figures["query_ms_idle"]["n"] >= 10 and figures["query_ms_during_ingestion"]["n"] >= 1
