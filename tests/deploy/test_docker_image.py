"""The Docker image itself, built and run: ``make test-docker`` (docs/deploying.md).

The image under test is ``DISTILSERVE_DOCKER_IMAGE`` (``make test-docker`` builds it air-gapped
and sets it). Each container runs the way ``deploy/kubernetes/deployment.yaml`` runs the pod: the
manifest's user, environment, CPU and memory limits, a read-only root filesystem with a tmpfs
where the manifest mounts its ``emptyDir``, all capabilities dropped, no privilege escalation. Its
port is published on the host's loopback only, and every request goes through it.

Checked: the image's size; Docker's own HEALTHCHECK reaching ``healthy`` (and how long that
takes from ``docker run``); the default models listed and answering; the non-root uid and the
read-only root; ``docker stop`` draining within the grace period with no 5xx while requests keep
coming. Without a Docker engine the tests are skipped, each with the reason.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.processes import http_get, http_post_json
from tests.deploy.test_manifests import container, env_of, one

pytestmark = pytest.mark.docker

# The goal for the runtime image (docker's MB, 10^6 bytes).
MAX_IMAGE_MB = 400
# What the image serves by default (Dockerfile, DISTILSERVE_MODEL).
DEFAULT_MODELS = {"all-minilm-l6-v2", "sst2-sentiment", "squad-reader", "squad-reranker"}
# Loading and warming up four models on a loaded 2-core machine takes seconds; this only bounds
# a container that never gets there.
START_TIMEOUT_S = 120
API_KEY = f"test-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Requests the stop test sends at most per worker (a bounded loop, loopback only).
MAX_REQUESTS_PER_WORKER = 2000


def docker_cli() -> str:
    found = shutil.which(os.environ.get("DOCKER", "docker"))
    if found is None:
        pytest.skip("DOCKER TESTS SKIPPED: no docker client on PATH (apt-get install docker.io)")
    return found


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [docker_cli(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """The image to test; the module is skipped, loudly, without an engine or an image name."""
    info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    if info.returncode != 0:
        pytest.skip(
            "DOCKER TESTS SKIPPED: no Docker engine answers "
            f"({info.stderr.strip().splitlines()[-1] if info.stderr.strip() else 'docker info failed'}); "
            "make test-docker starts dockerd where it can"
        )
    name = os.environ.get("DISTILSERVE_DOCKER_IMAGE")
    if not name:
        pytest.skip("DOCKER TESTS SKIPPED: DISTILSERVE_DOCKER_IMAGE is not set (make test-docker builds one)")
    inspected = docker("image", "inspect", name, check=False)
    assert inspected.returncode == 0, f"DISTILSERVE_DOCKER_IMAGE={name} is not an image here"
    return name


def image_config(image: str) -> dict[str, Any]:
    inspected = docker("image", "inspect", "--format", "{{json .Config}}", image)
    config: dict[str, Any] = json.loads(inspected.stdout)
    return config


def manifest_run_options() -> list[str]:
    """``docker run`` options for what deployment.yaml asks of the pod."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    main = container()
    options = [
        "--user",
        f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
        "--cpus",
        str(main["resources"]["limits"]["cpu"]),
        # Kubernetes' Gi is 2^30 bytes, docker's g too.
        "--memory",
        main["resources"]["limits"]["memory"].removesuffix("Gi") + "g",
    ]
    security = main["securityContext"]
    if security["readOnlyRootFilesystem"]:
        options.append("--read-only")
    if security["capabilities"]["drop"] == ["ALL"]:
        options += ["--cap-drop", "ALL"]
    if security["allowPrivilegeEscalation"] is False:
        options += ["--security-opt", "no-new-privileges"]
    # Each emptyDir the manifest mounts is a tmpfs of its size limit here.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in main["volumeMounts"]:
        size = volumes[mount["name"]]["emptyDir"]["sizeLimit"].removesuffix("Mi")
        options += ["--tmpfs", f"{mount['mountPath']}:size={size}m"]
    for name, item in env_of(main).items():
        source = item.get("valueFrom", {})
        if "value" in item:
            options += ["--env", f"{name}={item['value']}"]
        elif "resourceFieldRef" in source:  # the threads: the CPU limit in whole cores
            options += ["--env", f"{name}={main['resources']['limits']['cpu']}"]
        elif "secretKeyRef" in source:  # the API key
            options += ["--env", f"{name}={API_KEY}"]
        else:
            raise AssertionError(f"{name}: no way to set it here from {item}")
    return options


@dataclass
class Container:
    """A running container from ``image``, its port published on 127.0.0.1."""

    name: str
    base_url: str
    started_at: float  # time.time() just before `docker run`
    ready_s: float  # `docker run` to the first 200 from /health/ready
    healthy_s: float  # `docker run` to Docker's health_status: healthy event
    events: list[str] = field(default_factory=list)

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name).stdout.strip()

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr


def start_container(image: str) -> Container:
    name = f"distilserve-test-{uuid.uuid4().hex[:12]}"
    port = container()["ports"][0]["containerPort"]
    started_at = time.time()
    # Docker's own events since just before `docker run` (--since replays those the subscription
    # missed): the health transitions, with the daemon's times; no polling of `docker inspect`.
    events = subprocess.Popen(
        [docker_cli(), "events", "--since", f"{started_at:.3f}", "--filter", f"container={name}",
         "--filter", "event=health_status", "--format", "{{.TimeNano}} {{.Status}}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in events.stdout or []], daemon=True).start()
    try:
        docker("run", "--detach", "--name", name, "--publish", f"127.0.0.1::{port}",
               *manifest_run_options(), image)  # fmt: skip
        host_port = docker("port", name, str(port)).stdout.splitlines()[0].rsplit(":", 1)[1]
        base_url = f"http://127.0.0.1:{host_port}"
        ready_s = wait_ready(name, base_url) - started_at
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no health_status: healthy in {START_TIMEOUT_S}s (events: {seen})\n"
                    + docker("logs", name, check=False).stderr[-3000:]
                ) from None
            seen.append(line.strip())
            stamp, status = line.split(" ", 1)
            if status.strip() == "health_status: healthy":
                healthy_s = int(stamp) / 1e9 - started_at
                return Container(name, base_url, started_at, ready_s, healthy_s, seen)
    except BaseException:
        docker("rm", "--force", name, check=False)
        raise
    finally:
        events.terminate()
        events.wait(timeout=10)


def wait_ready(name: str, base_url: str) -> float:
    """Poll /health/ready until it answers 200; the time it did."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for attempt in itertools.count():
        if time.monotonic() > deadline:
            break
        try:
            status, _ = http_get(f"{base_url}/health/ready", timeout=2)
            if status == 200:
                return time.time()
        except (OSError, HTTPException):
            pass  # not listening yet (docker-proxy closes the connection)
        # A docker CLI call costs CPU the starting container needs: once a second is enough.
        if (
            attempt % 20 == 19
            and docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() != "true"
        ):
            raise AssertionError(f"the container exited:\n{docker('logs', name, check=False).stderr[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"/health/ready did not answer 200 in {START_TIMEOUT_S}s")


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Container]:
    running = start_container(image)
    try:
        yield running
    finally:
        docker("rm", "--force", running.name, check=False)


def test_runtime_image_is_small_and_says_how_it_runs(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    size_mb = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6
    with capsys.disabled():
        print(f"\n{image}: {size_mb:.0f} MB")
    assert size_mb <= MAX_IMAGE_MB
    config = image_config(image)
    main = container()
    pod = one("Deployment")["spec"]["template"]["spec"]
    # The manifest's user and port are the image's own.
    assert config["User"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert set(config["ExposedPorts"]) == {f"{port['containerPort']}/tcp" for port in main["ports"]}
    healthcheck = config["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD" and "/health/ready" in " ".join(healthcheck)
    assert config["Cmd"] == ["distilserve", "serve"] and config["StopSignal"] == "SIGTERM"
    image_env = dict(item.split("=", 1) for item in config["Env"])
    manifest_models = env_of(main)["DISTILSERVE_MODEL"]["value"]
    assert set(image_env["DISTILSERVE_MODEL"].split(",")) == set(manifest_models.split(","))
    # The manifest's preStop hook runs `sleep` inside the image.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    slept = docker("run", "--rm", "--network", "none", "--entrypoint", pre_stop[0], image, "0", check=False)
    assert slept.returncode == 0, slept.stderr
    # No torch or transformers in the runtime image.
    for module in ("torch", "transformers", "optimum"):
        imported = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c",
                          f"import {module}", check=False)  # fmt: skip
        assert imported.returncode != 0 and "ModuleNotFoundError" in imported.stderr, module


def test_healthcheck_reaches_healthy(served: Container, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(
            f"\n{served.name}: /health/ready 200 after {served.ready_s:.1f} s, "
            f"Docker healthy after {served.healthy_s:.1f} s (from `docker run`)"
        )
    assert served.inspect("{{.State.Health.Status}}") == "healthy"
    assert served.events[-1].endswith("health_status: healthy")
    # The probes the manifest uses answer on the manifest's port.
    main = container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        status, _ = http_get(served.base_url + main[probe]["httpGet"]["path"])
        assert status == 200, probe


def test_default_models_are_listed_and_answer(served: Container) -> None:
    status, _ = http_get(f"{served.base_url}/v1/models")
    assert status == 401, "the image must require the API key it was given"
    status, body = http_get(f"{served.base_url}/v1/models", headers=AUTH)
    assert status == 200
    models = {entry["id"]: entry["task"] for entry in json.loads(body)["data"]}
    assert set(models) == DEFAULT_MODELS

    status, classified = http_post_json(
        f"{served.base_url}/v1/classify",
        {"model": "sst2-sentiment", "input": ["A gripping, beautifully shot film.", "Dull and too long."]},
        headers=AUTH,
    )
    assert status == 200, classified
    assert [item["label"] for item in classified["data"]] == ["positive", "negative"]

    status, embedded = http_post_json(
        f"{served.base_url}/v1/embeddings",
        {"model": "all-minilm-l6-v2", "input": ["hello world", "a second sentence"]},
        headers=AUTH,
    )
    assert status == 200, embedded
    vectors = [item["embedding"] for item in embedded["data"]]
    assert len(vectors) == 2 and all(len(vector) == 384 for vector in vectors)
    # all-MiniLM-L6-v2's embeddings are normalized.
    assert all(abs(sum(x * x for x in vector) - 1) < 1e-3 for vector in vectors)

    context = "My name is Wolfgang and I live in Berlin."
    status, answer = http_post_json(
        f"{served.base_url}/v1/answer",
        {"model": "squad-reader", "inputs": {"question": "Where do I live?", "context": context}},
        headers=AUTH,
    )
    assert status == 200, answer
    assert answer["answer"] == "Berlin" and context[answer["start"] : answer["end"]] == "Berlin"

    documents = ["The Danube flows through Budapest.", "Paris is the capital of France."]
    status, reranked = http_post_json(
        f"{served.base_url}/v1/rerank",
        {"model": "squad-reranker", "query": "What is the capital of France?", "documents": documents},
        headers=AUTH,
    )
    assert status == 200, reranked
    assert [result["index"] for result in reranked["results"]] == [1, 0]


def test_runs_as_non_root_on_a_read_only_root(served: Container) -> None:
    assert served.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    # The server itself (PID 1), not only what `docker exec` starts: real, effective, saved and
    # file-system uid are all the manifest's non-root user.
    run_as = str(one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    uids = docker("exec", served.name, "grep", "^Uid:", "/proc/1/status").stdout.split()[1:]
    assert run_as != "0" and uids == [run_as] * 4, uids
    denied = docker("exec", served.name, "touch", "/opt/distilserve/written", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # The tmpfs is where the server may write: its cache directory is there.
    cache_dir = dict(item.split("=", 1) for item in image_config(served_image(served))["Env"])[
        "DISTILSERVE_CACHE_DIR"
    ]
    mounts = {mount["mountPath"] for mount in container()["volumeMounts"]}
    assert any(cache_dir.startswith(path.rstrip("/") + "/") for path in mounts), (cache_dir, mounts)
    assert docker("exec", served.name, "touch", "/tmp/written", check=False).returncode == 0


def served_image(running: Container) -> str:
    return running.inspect("{{.Config.Image}}")


@dataclass
class Outcome:
    stop_issued: bool
    status: int | None  # None: no HTTP answer (refused, closed)
    error: str = ""


def test_docker_stop_drains_without_5xx(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    running = start_container(image)
    try:
        _check_stop_drains(running, capsys)
    finally:
        docker("rm", "--force", running.name, check=False)


def _check_stop_drains(running: Container, capsys: pytest.CaptureFixture[str]) -> None:
    main = container()
    env = {name: item.get("value") for name, item in env_of(main).items()}
    drain_s = float(env["DISTILSERVE_DRAIN_S"] or 0)
    grace_s = int(one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    assert drain_s > 0, "the manifest must drain before it stops accepting"

    classify = {"model": "sst2-sentiment", "input": ["A gripping, beautifully shot film."] * 4}
    stop_issued = threading.Event()
    finished = threading.Event()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    workers_count = 4
    all_answered = threading.Barrier(workers_count + 1)

    def worker() -> None:
        first = True
        for _ in range(MAX_REQUESTS_PER_WORKER):
            if finished.is_set():
                break
            issued = stop_issued.is_set()
            try:
                status, _ = http_post_json(f"{running.base_url}/v1/classify", classify, headers=AUTH)
                outcome = Outcome(issued, status)
            except (urllib.error.URLError, OSError, HTTPException) as exc:
                outcome = Outcome(issued, None, repr(exc))
            with lock:
                outcomes.append(outcome)
            if first:
                first = False
                all_answered.wait(timeout=60)
            if outcome.status is None and issued:
                break  # the server has stopped accepting

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers_count)]
    for thread in threads:
        thread.start()
    all_answered.wait(timeout=60)  # every worker has had an answer: requests are flowing

    stop_issued.set()
    stop_started = time.monotonic()
    stopping = subprocess.Popen(
        [docker_cli(), "stop", "--time", str(grace_s), running.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Draining: ready turns 503 ("draining") while requests are still served.
    deadline = time.monotonic() + grace_s
    while True:
        status, body = http_get(f"{running.base_url}/health/ready")
        if status == 503:
            assert json.loads(body)["status"] == "draining"
            break
        assert status == 200 and time.monotonic() < deadline, (status, body)
        time.sleep(0.05)
    status, answer = http_post_json(f"{running.base_url}/v1/classify", classify, headers=AUTH)
    assert status == 200, f"a request during the drain was not served: {status} {answer}"

    _, stop_errors = stopping.communicate(timeout=grace_s + 30)
    stop_s = time.monotonic() - stop_started
    finished.set()
    for thread in threads:
        thread.join(timeout=60)
    assert stopping.returncode == 0, stop_errors

    with lock:
        answered = [outcome.status for outcome in outcomes if outcome.status is not None]
        before = [outcome for outcome in outcomes if not outcome.stop_issued]
        during = [outcome for outcome in outcomes if outcome.stop_issued]
    with capsys.disabled():
        print(
            f"\ndocker stop: {stop_s:.1f} s (drain {drain_s:g} s, grace {grace_s} s); "
            f"{len(outcomes)} requests, {len(during)} after the stop: "
            f"{sum(1 for o in during if o.status == 200)} answered 200, "
            f"{sum(1 for o in during if o.status is None)} found the port closed"
        )
    assert not [status for status in answered if status >= 500], f"5xx during the stop: {sorted(answered)}"
    assert all(status == 200 for status in answered), sorted(set(answered))
    assert all(outcome.status == 200 for outcome in before), [o.error for o in before if o.status != 200]
    # Within the grace period: SIGTERM was enough (a SIGKILL would give exit code 137).
    exit_code = int(running.inspect("{{.State.ExitCode}}"))
    assert exit_code in (0, 143), f"exit code {exit_code}:\n{running.logs()[-3000:]}"
    assert stop_s < grace_s
    assert "Application shutdown complete" in running.logs()


# The soak (issue 25): mixed traffic against the container, under the manifest's 1 GiB limit.
SOAK_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "memory_soak.py"
# Bounded: this many requests, or this long, whichever comes first (loopback only).
SOAK_REQUESTS = 3000
SOAK_MAX_S = 900
# Each request's deadline (X-Request-Timeout; the server's largest by default): a burst's
# requests wait in the queue, the worst case for memory, instead of being answered 504 on a slow
# CPU, so that any 5xx is a failure whatever the machine's speed.
SOAK_REQUEST_TIMEOUT_S = 300
# The container's anonymous memory (the processes' heaps and arenas; no page cache), in bytes:
# cgroup v2's ``anon``, or v1's ``total_rss`` where Docker runs on cgroup v1 (as CI's does).
ANON_MEMORY = (
    "if [ -f /sys/fs/cgroup/memory.stat ]; "
    "then awk '$1 == \"anon\" {print $2}' /sys/fs/cgroup/memory.stat; "
    "else awk '$1 == \"total_rss\" {print $2}' /sys/fs/cgroup/memory/memory.stat; fi"
)


def test_memory_stays_within_the_limit_and_flat_under_mixed_traffic(image: str, tmp_path: Path) -> None:
    limit = container()["resources"]["limits"]["memory"]
    assert limit == "1Gi", "the soak checks the deployment's limit; update it with the manifest"
    running = start_container(image)
    try:
        summary_path = tmp_path / "soak.json"
        rss = f"{docker_cli()} exec {running.name} sh -c {shlex.quote(ANON_MEMORY)}"
        soak = subprocess.run(
            [sys.executable, str(SOAK_SCRIPT), "--url", running.base_url, "--api-key", API_KEY,
             "--rss-command", rss, "--requests", str(SOAK_REQUESTS), "--max-seconds", str(SOAK_MAX_S),
             "--samples", "20", "--burst-every", "1000", "--max-rss-mb", "900", "--json", str(summary_path),
             "--request-timeout-s", str(SOAK_REQUEST_TIMEOUT_S)],
            capture_output=True, text=True, timeout=SOAK_MAX_S + SOAK_REQUEST_TIMEOUT_S + 120, check=False,
        )  # fmt: skip
        oom_killed = running.inspect("{{.State.OOMKilled}}")
        state = running.inspect("{{.State.Status}}")
        logs = running.logs()
    finally:
        docker("rm", "--force", running.name, check=False)
    print(soak.stdout[-4000:])
    assert oom_killed == "false" and state == "running", f"{state}, OOM killed: {oom_killed}\n{logs[-3000:]}"
    assert summary_path.is_file(), f"the soak wrote no summary:\n{soak.stderr[-3000:]}"
    summary = json.loads(summary_path.read_text())
    server_errors = {status: n for status, n in summary["statuses"].items() if int(status) >= 500}
    assert not server_errors and not summary["connection_errors"], soak.stdout[-3000:]
    assert not summary["rss_rising"], f"memory kept rising: {summary['curve']}"
    assert summary["max_rss_mb"] <= 900, f"memory near the 1 GiB limit: {summary['curve']}"
    assert soak.returncode == 0, soak.stdout[-3000:] + soak.stderr[-3000:]
