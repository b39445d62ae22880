"""The docker suite's memory soak (tests/deploy/test_docker_image.py) as a command, for runs the
test does not make: more requests, or another worker count. It starts the image as the Kubernetes
manifest runs it (its limits, read-only root, tmpfs), adds DISTILSERVE_WORKERS, and runs
scripts/memory_soak.py against it, reading the container's anonymous memory from its cgroup.
Needs a running dockerd (scripts/docker_image.sh dockerd-start) and the image (make test-docker
builds distilserve:ci). Prints the soak's samples and summary, then whether the kernel OOM-killed it.

    PYTHONPATH=$PWD .venv/bin/python scripts/docker_soak.py [--image distilserve:ci] [--workers 1]
        [--requests 20000] [--json soak.json]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import tests.deploy.test_docker_image as docker_suite


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", default="distilserve:ci")
    parser.add_argument("--workers", type=int, default=1, help="DISTILSERVE_WORKERS in the container")
    parser.add_argument("--requests", type=int, default=docker_suite.SOAK_REQUESTS)
    parser.add_argument("--json", default="docker-soak.json", help="where the soak's summary goes")
    args = parser.parse_args()
    manifest_options = docker_suite.manifest_run_options
    docker_suite.manifest_run_options = lambda: [  # type: ignore[assignment]
        *manifest_options(),
        "--env",
        f"DISTILSERVE_WORKERS={args.workers}",
    ]
    running = docker_suite.start_container(args.image)
    try:
        rss = f"{docker_suite.docker_cli()} exec {running.name} sh -c {shlex.quote(docker_suite.ANON_MEMORY)}"
        # About 20 requests a second on 2 cores: the time allowed follows the request count.
        max_seconds = max(docker_suite.SOAK_MAX_S, args.requests // 10)
        soak = subprocess.run(
            [sys.executable, str(docker_suite.SOAK_SCRIPT), "--url", running.base_url,
             "--api-key", docker_suite.API_KEY, "--rss-command", rss, "--requests", str(args.requests),
             "--max-seconds", str(max_seconds), "--samples", "40", "--burst-every", "1000",
             "--max-rss-mb", "900", "--json", args.json,
             # As the suite asks: a burst's requests wait in the queue (the worst case for memory)
             # rather than end in 504s at the 30 s default on a slow CPU.
             "--request-timeout-s", str(docker_suite.SOAK_REQUEST_TIMEOUT_S)],
            check=False,
        )  # fmt: skip
        print(
            "OOM killed:",
            running.inspect("{{.State.OOMKilled}}"),
            "state:",
            running.inspect("{{.State.Status}}"),
        )
        return soak.returncode
    finally:
        docker_suite.docker("rm", "--force", running.name, check=False)


if __name__ == "__main__":
    sys.exit(main())
