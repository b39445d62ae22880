"""distilserve's own view of a load-test run, from its /metrics before and after the run.

The server's histograms say what its batches looked like under that load (rows per batch,
padding, how busy the inference thread was, queue wait): the evidence a profile would otherwise
have to provide. Prometheus text is parsed for those few histograms only.
"""

from __future__ import annotations

import json
from typing import Any

from distilserve.bench.client import RawHttpClient

# distilserve's own histograms, read from /metrics before and after each run: what its batches
# looked like under that load (the evidence a profile would otherwise have to provide).
SERVER_HISTOGRAMS = (
    "distilserve_batch_size",
    "distilserve_padding_ratio",
    "distilserve_inference_seconds",
    "distilserve_tokenization_seconds",
    "distilserve_queue_wait_seconds",
)


def parse_histogram_totals(text: str) -> dict[str, float]:
    """``{name_sum: x, name_count: n}`` over every label set, for ``SERVER_HISTOGRAMS``."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(SERVER_HISTOGRAMS):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric.endswith(("_sum", "_count")):
            totals[metric] = totals.get(metric, 0.0) + float(value)
    return totals


async def scrape_server_totals(url: str | None) -> dict[str, float] | None:
    """The histogram totals at ``url``/metrics, or None when there is no server or no answer."""
    if url is None:
        return None
    scraper = RawHttpClient(url)
    try:
        status, body = await scraper.get("/metrics")
    except OSError:
        return None
    finally:
        await scraper.aclose()
    return parse_histogram_totals(body.decode()) if status == 200 else None


async def scrape_batching(url: str) -> dict[str, dict[str, Any]]:
    """Each served model's batching figures from ``url``/info (calibrated costs, overhead,
    wait), so the report says what planner each server variant ran with; empty on no answer."""
    scraper = RawHttpClient(url)
    try:
        status, body = await scraper.get("/info")
    except OSError:
        return {}
    finally:
        await scraper.aclose()
    if status != 200:
        return {}
    models = json.loads(body).get("models", [])
    return {model["name"]: model["batching"] for model in models if "batching" in model}


def server_side(before: dict[str, float], after: dict[str, float], duration_s: float) -> dict[str, float]:
    """Per-run means from the difference of two scrapes (empty when no batch ran)."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("distilserve_batch_size_count")
    requests = delta("distilserve_tokenization_seconds_count")
    if batches <= 0:
        return {}
    return {
        "server_batches": batches,
        "server_mean_batch_rows": delta("distilserve_batch_size_sum") / batches,
        "server_mean_padding_share": delta("distilserve_padding_ratio_sum") / batches,
        "server_inference_busy_share": delta("distilserve_inference_seconds_sum") / max(duration_s, 1e-9),
        "server_mean_batch_ms": 1000.0 * delta("distilserve_inference_seconds_sum") / batches,
        "server_mean_tokenize_ms": 1000.0 * delta("distilserve_tokenization_seconds_sum") / max(requests, 1),
        "server_mean_queue_wait_ms": 1000.0
        * delta("distilserve_queue_wait_seconds_sum")
        / max(delta("distilserve_queue_wait_seconds_count"), 1),
    }
