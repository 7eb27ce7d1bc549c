"""The Ray Serve configs (README, "Scaling out"): deploy/serve.yaml for this machine and the KubeRay
RayService manifest for a cluster, validated by Ray Serve's own config schema and KubeRay's CRD schema
(vendored, deploy/schemas/README.md), and kept in agreement with the app and the settings."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

DEPLOY = REPO / "deploy"
DEPLOYMENTS = {"Ingress", "Generator", "Writer"}


def _serve_yaml() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    return config


def _manifest() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((DEPLOY / "kuberay-rayservice.yaml").read_text()))


def _ray_service() -> dict[str, Any]:
    return next(doc for doc in _manifest() if doc["kind"] == "RayService")


def _serve_config_v2() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_ray_service()["spec"]["serveConfigV2"])
    return config


def _deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


@pytest.mark.parametrize("which", ["serve.yaml", "kuberay serveConfigV2"])
def test_serve_configs_pass_ray_serves_own_schema(which: str) -> None:
    pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from ray.serve.schema import ServeDeploySchema

    config = _serve_yaml() if which == "serve.yaml" else _serve_config_v2()
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.name == "rag" and app.route_prefix == "/"
    assert app.import_path == "rag_service.scaling.serve_app:build"


def test_both_configs_name_the_apps_deployments_and_keep_one_writer() -> None:
    source = (REPO / "rag_service" / "scaling" / "serve_app.py").read_text()
    declared = set(re.findall(r'@serve\.deployment\(name="(\w+)"', source))
    assert declared == DEPLOYMENTS
    for config in (_serve_yaml(), _serve_config_v2()):
        deployments = _deployments(config)
        assert set(deployments) == DEPLOYMENTS
        assert deployments["Writer"]["num_replicas"] == 1, "one writer owns the SQLite store"
        assert "autoscaling_config" not in deployments["Writer"]
        assert deployments["Ingress"]["autoscaling_config"]["min_replicas"] >= 2


def test_the_writer_lands_on_the_one_pod_with_the_index_volume() -> None:
    docs = _manifest()
    cluster = _ray_service()["spec"]["rayClusterConfig"]
    wanted = _deployments(_serve_config_v2())["Writer"]["ray_actor_options"]["resources"]
    (resource,) = wanted
    offering = [g for g in cluster["workerGroupSpecs"] if resource in g.get("resources", {})]
    assert len(offering) == 1, f"exactly one worker group offers {resource}"
    (group,) = offering
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    (volume,) = group["template"]["spec"]["volumes"]
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = group["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    index_dir = next(e["value"] for e in container["env"] if e["name"] == "RAG_INDEX__DIR")
    assert mount["mountPath"] == index_dir


def test_ray_version_and_settings_agree_with_the_project() -> None:
    pin = re.search(r'"ray\[serve,data\]==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin is not None
    cluster = _ray_service()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pin.group(1), "the image's Ray is the ray extra's"
    known = set(re.findall(r"^#?\s*(RAG_\w+)=", (REPO / ".env.example").read_text(), re.M))
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", []) if e["name"].startswith("RAG_")}
            assert names and names <= known, names - known


def test_the_manifest_passes_kuberays_rayservice_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (the ray extra has it)")
    vendored = DEPLOY / "schemas" / "ray.io_rayservices.v1.schema.json.gz"
    schema = json.loads(gzip.decompress(vendored.read_bytes()))
    service = _ray_service()
    jsonschema.validate(service, schema)
    # And the schema does check: a wrong type is refused.
    broken = json.loads(json.dumps(service))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
