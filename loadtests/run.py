"""``make loadtest``: run the Locust load test headless against a server, starting one if none runs.

    .venv/bin/python -m loadtests.run [--users 4] [--spawn-rate 1] [--time 60s] [--url http://127.0.0.1:8000]
        [-- extra Locust options, e.g. ChatUser SearchUser --budget total=9000]

If nothing answers ``/healthz`` at ``--url``, a server is started there (``rag-service serve`` on
127.0.0.1), waited for until ``/readyz`` says 200, and stopped afterwards. Locust's CSV and HTML
reports, its verdict (JSON) and a summary with the CPU share of Locust and of the server go to
``--reports`` (``reports/loadtest/``, ignored by git). The exit status is Locust's: 0 when every
stage kept its budget and errors stayed under the limit, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil

from benchmarks.server import REPO, server, tree_cpu_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("LOADTEST_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--users", type=int, default=4, help="concurrent Locust users")
    parser.add_argument("--spawn-rate", type=float, default=1.0, help="users started per second")
    parser.add_argument("--time", default="60s", help="run time (Locust's --run-time, e.g. 60s, 5m)")
    parser.add_argument("--reports", type=Path, default=REPO / "reports" / "loadtest")
    parser.add_argument("locust_args", nargs="*", help="passed on to Locust (after `--`)")
    args = parser.parse_args(argv)

    args.reports.mkdir(parents=True, exist_ok=True)
    prefix = args.reports / "loadtest"
    with server(args.url.rstrip("/"), args.reports / "server.log") as (url, started_proc):
        command = [
            sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
            "--host", url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", args.time, "--csv", str(prefix), "--html", f"{prefix}.html",
            "--verdict-json", f"{prefix}_verdict.json", "--only-summary", *args.locust_args,
        ]  # fmt: skip
        print(" ".join(command), flush=True)
        server_proc = psutil.Process(started_proc.pid) if started_proc else None
        server_cpu = tree_cpu_seconds(server_proc) if server_proc else 0.0
        started = time.perf_counter()
        locust = psutil.Popen(command, cwd=REPO)
        code = int(locust.wait())
        wall = time.perf_counter() - started
        cpus = psutil.cpu_count() or 1
        summary: dict[str, object] = {"exit_code": code, "wall_s": round(wall, 1), "cpus": cpus}
        verdict_path = Path(f"{prefix}_verdict.json")
        if verdict_path.is_file():
            share = json.loads(verdict_path.read_text())["locust_cpu_share_of_one_core"]
            summary["locust_cpu_share_of_machine"] = round(share / cpus, 3)
        if server_proc is not None:
            used = tree_cpu_seconds(server_proc) - server_cpu
            summary["server_cpu_share_of_machine"] = round(used / wall / cpus, 3)
        else:
            summary["server_cpu_share_of_machine"] = "not measured (server not started by this run)"
    (args.reports / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {summary}\nreports in {args.reports}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
