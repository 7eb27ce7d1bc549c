"""Smoke runs of the benchmark scripts, so they keep working (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, scifact_dir


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
