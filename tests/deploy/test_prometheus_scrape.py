"""A real Prometheus scrapes a real ``distilserve serve``, with the repository's config.

Prometheus runs on loopback with deploy/prometheus/prometheus.yml (same job, metrics path and
alert rules; the target rewritten to the test's port, a 1 s scrape interval, a temporary
storage folder). The test sends traffic, then asks Prometheus's HTTP API for the series, the
alert rules' health and every query of the Grafana dashboard.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.processes import Process, free_port, http_get, http_post_json, serve_argv

yaml = pytest.importorskip("yaml")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="the prometheus binary is not installed (apt-get install prometheus; .ci/run installs it)",
    ),
]

DEPLOY = REPO_ROOT / "deploy"
JOB = "distilserve"
MODEL = "sentiment"
# The dashboard's panels that must show data once traffic has flowed (by title).
PANELS_WITH_DATA = (
    "Request rate",
    "p99 latency",
    "Request rate by route and status",
    "Request latency quantiles",
    "p99 latency by model and route",
    "Queue depth (rows waiting for a batch)",
    "Batch size (rows per batch)",
    "Padding ratio",
)


def prometheus_config(port: int, rule_dir: Path) -> dict[str, Any]:
    """The repository's config with the target on loopback and a 1 s scrape interval."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert len(jobs) == 1, "deploy/prometheus/prometheus.yml must have one 'distilserve' job"
    job = jobs[0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config["scrape_configs"] = [job]
    rule_files = []
    for name in config.get("rule_files", []):
        copied = rule_dir / Path(name).name
        shutil.copy(DEPLOY / "prometheus" / name, copied)
        rule_files.append(str(copied))
    config["rule_files"] = rule_files
    return config


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", (url, payload)
        return payload["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result


def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not seen within {timeout_s}s: {what}")


@pytest.fixture
def server_url(classify_bundle: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    argv = serve_argv([sys.executable, "-m", "distilserve"], [f"{MODEL}={classify_bundle}"], port)
    with Process(argv, tmp_path / "serve.log") as server:
        server.wait_until(f"http://127.0.0.1:{port}/health/ready", timeout_s=120)
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def traffic(server_url: str) -> Iterator[threading.Event]:
    """Classification requests in the background (bounded: at most 2 minutes), a few at a time."""
    stop = threading.Event()
    texts = ["A gripping, beautifully shot film.", "Dull.", "the plot was slow but the soundtrack was moving"]

    def send() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            status, answer = http_post_json(f"{server_url}/v1/classify", {"input": texts})
            assert status == 200, answer
            stop.wait(0.05)

    senders = [threading.Thread(target=send, daemon=True) for _ in range(3)]
    for sender in senders:
        sender.start()
    yield stop
    stop.set()
    for sender in senders:
        sender.join(timeout=30)


@pytest.fixture
def prometheus(server_url: str, tmp_path: Path) -> Iterator[PrometheusApi]:
    server_port = int(server_url.rsplit(":", 1)[1])
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(server_port, tmp_path)))
    port = free_port()
    argv = [
        "prometheus",
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with Process(argv, tmp_path / "prometheus.log") as process:
        process.wait_until(f"http://127.0.0.1:{port}/-/ready", timeout_s=60)
        yield PrometheusApi(f"http://127.0.0.1:{port}")


def dashboard_queries() -> dict[str, list[str]]:
    """Every panel's PromQL, with Grafana's variables given the values a user would see."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "distilserve.json").read_text())
    queries: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (
                target["expr"].replace("$__rate_interval", "15s").replace("$job", JOB).replace("$model", ".*")
            )
            queries.setdefault(panel["title"], []).append(expr)
    return queries


def test_prometheus_scrapes_the_server_with_the_repository_config(
    traffic: threading.Event, prometheus: PrometheusApi
) -> None:
    def scraped() -> bool:
        series = prometheus.query("distilserve_requests_total")
        return any(
            s["metric"].get("route") == "/v1/classify" and s["metric"].get("status") == "200" for s in series
        )

    eventually(scraped, 60, "distilserve_requests_total for /v1/classify")

    # The target is up, under the repository's job name and metrics path.
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [(JOB, "up")]
    assert targets[0]["discoveredLabels"]["__metrics_path__"] == "/metrics"

    classify = [
        s["metric"]
        for s in prometheus.query('distilserve_requests_total{route="/v1/classify"}')
        if s["metric"]["status"] == "200"
    ]
    assert classify and classify[0]["model"] == MODEL and classify[0]["job"] == JOB
    assert {"model", "route", "status", "job", "instance"} <= set(classify[0])
    # Prometheus's own scrapes are counted too (from its second scrape on): /metrics, no model.
    scrapes = f'distilserve_requests_total{{job="{JOB}", route="/metrics", model=""}}'
    eventually(lambda: bool(prometheus.query(scrapes)), 30, "the scrapes of /metrics counted")
    families = ("distilserve_queue_depth", "distilserve_batch_size_bucket", "distilserve_padding_ratio_count")
    for family in families:
        series = prometheus.query(f'{family}{{job="{JOB}"}}')
        assert series and all(s["metric"]["model"] == MODEL for s in series), family
    info = prometheus.query("distilserve_model_info")
    assert [(s["metric"]["model"], s["metric"]["task"]) for s in info] == [(MODEL, "text-classification")]

    # Every dashboard query is valid PromQL; the main panels show numbers once rates have data.
    queries = dashboard_queries()
    assert set(PANELS_WITH_DATA) <= set(queries)

    def panels_have_data() -> bool:
        for title in PANELS_WITH_DATA:
            for expr in queries[title]:
                values = [float(s["value"][1]) for s in prometheus.query(expr)]
                if not values or not all(math.isfinite(v) for v in values):
                    return False
        return True

    eventually(panels_have_data, 60, f"data in the dashboard panels {PANELS_WITH_DATA}")
    for exprs in queries.values():
        for expr in exprs:
            prometheus.query(expr)  # raises unless Prometheus accepts the query
    p99 = float(prometheus.query(queries["p99 latency"][0])[0]["value"][1])
    assert 0 < p99 < 30

    # The alert rules loaded and evaluate without errors; none fires on a healthy server.
    def rules_evaluated() -> bool:
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) >= 5 and all(rule["health"] == "ok" for rule in rules)

    eventually(rules_evaluated, 30, "every alert rule evaluated with health ok")
    firing = [a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]
    assert firing == []
