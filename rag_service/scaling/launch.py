"""``rag-service serve-ray``: the Serve application of deploy/serve.yaml on a local Ray cluster, with
Ray's services, Serve's proxy and the HTTP port on 127.0.0.1 only.

The app is built in this process, so settings come from this directory's ``.env`` and environment and
relative paths mean what they mean for ``rag-service serve``. (Serve replicas' internal gRPC servers
listen on every interface, which Ray does not let us change: keep the machine's firewall closed to
their ports, or run a cluster on a private network.) On a real cluster use the RayService manifest
(deploy/kuberay-rayservice.yaml) instead.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)
LOCAL_ADDRESS = "127.0.0.1"


def read_config(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    if not config.get("applications"):
        raise ValueError(f"{path}: no applications")
    return config


def deployment_options(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}


def start_local_cluster(num_cpus: int | None = None) -> None:
    """A one-node Ray cluster on 127.0.0.1 (no dashboard)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        address="local",
        _node_ip_address=LOCAL_ADDRESS,
        include_dashboard=False,
        num_cpus=num_cpus or os.cpu_count() or 2,
        logging_level=logging.WARNING,
    )


def run_app(config: dict[str, Any], *, port: int | None = None) -> str:
    """Deploy the config's first application; returns its URL once every replica is warm (blocking)."""
    from ray import serve

    from rag_service.scaling.serve_app import build

    http = config.get("http_options", {})
    host, port = LOCAL_ADDRESS, port or int(http.get("port", 8000))
    serve.start(http_options={"host": host, "port": port})
    app = config["applications"][0]
    started = time.perf_counter()
    serve.run(
        build(app.get("args"), deployment_options(app)),
        name=app.get("name", "rag"),
        route_prefix=app.get("route_prefix", "/"),
    )
    log.info(
        "Ray Serve application %s ready in %.0f s", app.get("name", "rag"), time.perf_counter() - started
    )
    return f"http://{host}:{port}"


def serve_ray(config_path: Path, *, port: int | None = None, num_cpus: int | None = None) -> int:
    import ray
    from ray import serve

    config = read_config(config_path)
    start_local_cluster(num_cpus)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = run_app(config, port=port)
        print(f"rag-service on Ray Serve: {url} (Ctrl-C stops it)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
