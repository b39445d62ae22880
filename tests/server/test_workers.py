"""``--workers N``: processes sharing the port serve, and /metrics counts for all of them."""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import pytest

from distilserve.models.session import cpu_count
from distilserve.server.app import session_options
from tests.deploy.processes import Process, free_port, http_get, http_post_json, serve_argv
from tests.server.conftest import make_settings


def test_workers_share_the_cores_between_their_onnx_runtime_threads(model_args: list[str]) -> None:
    assert session_options(make_settings(model_args)).intra_op_threads == 0  # ONNX Runtime decides
    shared = session_options(make_settings(model_args, workers=2)).intra_op_threads
    assert shared == max(cpu_count() // 2, 1)
    assert session_options(make_settings(model_args, workers=2, intra_op_threads=3)).intra_op_threads == 3


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    return [int(child) for child in text.split()]


def counted(metrics_text: str, route: str, status: str) -> float:
    """Requests of ``route`` answered ``status``, whatever the model label: a body the schema
    refuses is answered before any model is resolved."""
    labels = rf'model="[^"]*",route="{re.escape(route)}",status="{status}"'
    pattern = rf"^distilserve_requests_total\{{{labels}\}} (\S+)$"
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.MULTILINE))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc")
def test_two_workers_serve_one_port_and_metrics_report_both(model_args: list[str], tmp_path: Path) -> None:
    port = free_port()
    argv = serve_argv([sys.executable, "-m", "distilserve"], model_args[:1], port)
    argv += ["--workers", "2", "--no-build-default", "--drain-s", "0"]
    base = f"http://127.0.0.1:{port}"
    server = Process(argv, tmp_path / "serve.log")
    with server:
        server.wait_until(f"{base}/health/ready", timeout_s=120)
        assert server.process is not None
        workers = children(server.process.pid)
        assert len(workers) == 2, server.log_tail()
        # Each request on a connection of its own: the kernel hands them to either worker.
        for index in range(12):
            status, body = http_post_json(f"{base}/v1/classify", {"input": f"the film was great {index}"})
            assert status == 200, body
            assert body["data"][0]["label"] in {"negative", "neutral", "positive"}
        status, body = http_post_json(f"{base}/v1/classify", {"input": ""})
        assert status == 422 and body["error"]["code"] == "invalid_input"
        # Whichever worker answers /metrics reports the requests of both.
        for _ in range(4):
            status, text = http_get(f"{base}/metrics")
            assert status == 200
            metrics_text = text.decode()
            assert counted(metrics_text, "/v1/classify", "200") == 12
            assert counted(metrics_text, "/v1/classify", "422") == 1
            assert re.search(
                r'^distilserve_queue_depth\{model="sentiment"\} 0\.0$', metrics_text, re.MULTILINE
            )
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log_tail()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
