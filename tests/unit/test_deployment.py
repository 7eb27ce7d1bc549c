"""The deployment files: docker-compose.yml validated by Debian's docker-compose (1.29, no engine
needed for `config`), and the Dockerfile kept on the README's install path (`make install`, `make index`)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose not installed (`make test` installs Debian's package where apt-get is usable)",
)


def _config(*profiles: str) -> dict[str, Any]:
    args = [str(COMPOSE), "-f", str(REPO / "docker-compose.yml")]
    for profile in profiles:
        args += ["--profile", profile]
    done = subprocess.run([*args, "config"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@needs_compose
def test_cpu_profile_is_valid_and_healthchecked_on_readyz() -> None:
    services = _config()["services"]
    unprofiled = {name for name, service in services.items() if not service.get("profiles")}
    assert unprofiled == {"rag"}, "only the CPU service starts without a profile"
    assert services["rag-gpu"]["profiles"] == ["gpu"]
    rag = services["rag"]
    assert rag["build"]["args"]["EXTRAS"].startswith("cpu")
    assert "/readyz" in " ".join(rag["healthcheck"]["test"])
    assert rag["stop_grace_period"] == "30s", "10 s to finish requests, then the engine and the snapshot"
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in rag["volumes"]}
    assert {"/app/models", "/app/indexes"} <= targets


@needs_compose
def test_gpu_profile_reserves_an_nvidia_device() -> None:
    services = _config("gpu")["services"]
    gpu = services["rag-gpu"]
    assert gpu["build"]["args"]["EXTRAS"].startswith("gpu")
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/readyz" in " ".join(gpu["healthcheck"]["test"])


@needs_compose
def test_load_profile_runs_locust_after_the_service_is_healthy() -> None:
    locust = _config("load")["services"]["locust"]
    assert locust["depends_on"]["rag"]["condition"] == "service_healthy"
    assert "loadtest" in " ".join(locust["command"])


def test_dockerfile_installs_the_way_the_readme_does() -> None:
    """The image must run the CI-tested recipe, not a hand-written copy of it."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "make install EXTRAS=" in dockerfile
    assert "make calibrate" in dockerfile and "rag-service serve" in dockerfile
    assert "pip install -r" not in dockerfile, "install through `make install` only"
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_edge_service_runs_the_measured_edge_profile() -> None:
    """The rag-edge compose service has exactly the settings benchmarks/edge_profile.py measured."""
    from benchmarks.edge_profile import EDGE_PROFILE
    from rag_service.config import Settings

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    edge = compose["services"]["rag-edge"]
    assert edge["profiles"] == ["edge"]
    environment = {k: str(v) for k, v in edge["environment"].items() if not k.startswith("RAG_SERVER__")}
    assert environment == EDGE_PROFILE
    # Every name is a real setting (a typo would be silently ignored by pydantic-settings).
    settings = Settings()
    for name in EDGE_PROFILE:
        section, field = name.removeprefix("RAG_").lower().split("__")
        assert hasattr(getattr(settings, section), field), name
    # And together they are valid settings (context + longest answer fit the shorter context length).
    env = {k.removeprefix("RAG_").lower(): v for k, v in EDGE_PROFILE.items()}
    nested: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        section, field = key.split("__")
        nested.setdefault(section, {})[field] = value
    Settings.model_validate(nested)
