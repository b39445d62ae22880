"""Prometheus metrics, all named ``distilserve_*``.

Each app owns its own ``CollectorRegistry`` (not the process-global one), so several apps in
one process (tests, or a library user embedding the server) never collide.

With ``--workers N`` (``distilserve.server.workers``) every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and ``/metrics``, whichever
worker answers it, reports the sum over all of them: counters and histograms add up, the
queue and in-flight gauges add up over live workers, and the per-worker figures (calibrated
costs) carry a ``pid`` label.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from distilserve.models.memory import resident_bytes

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # Decided once: a worker of ``--workers N`` starts with the variable set.
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None
        r = self.registry
        self.requests = Counter(
            "distilserve_requests",
            "Requests answered, by model, route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "distilserve_request_duration_seconds",
            "Time from receiving a request to answering it.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "distilserve_queue_wait_seconds",
            "Time a request's rows waited in the queue before their first batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenization = Histogram(
            "distilserve_tokenization_seconds",
            "Time to tokenize one request.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "distilserve_inference_seconds",
            "Time ONNX Runtime spent on one batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "distilserve_queue_depth",
            "Rows waiting for a batch.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_tokens = Gauge(
            "distilserve_queue_tokens",
            "Tokens admitted and not yet computed.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inflight_requests = Gauge(
            "distilserve_inflight_requests",
            "Requests admitted and not yet answered.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.batch_size = Histogram(
            "distilserve_batch_size",
            "Rows per model batch.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "distilserve_batch_tokens",
            "Padded tokens (rows x longest row) per model batch.",
            ["model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "distilserve_padding_ratio",
            "Share of a batch's padded tokens that are padding.",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "distilserve_rejected_requests",
            "Requests refused with 429 because the queue was full.",
            ["model", "reason"],
            registry=r,
        )
        self.timed_out = Counter(
            "distilserve_timed_out_requests",
            "Requests whose deadline expired before their result (504).",
            ["model"],
            registry=r,
        )
        self.cancelled = Counter(
            "distilserve_cancelled_requests",
            "Requests dropped because the client disconnected.",
            ["model"],
            registry=r,
        )
        self.skipped_rows = Counter(
            "distilserve_skipped_rows",
            "Queued rows never computed because their request expired or left.",
            ["model"],
            registry=r,
        )
        self.batch_overhead_tokens = Gauge(
            "distilserve_batch_overhead_tokens",
            "Fixed cost of one more batch, in padded tokens, as the batch planner uses it.",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.batch_max_wait = Gauge(
            "distilserve_batch_max_wait_seconds",
            "Longest wait of an under-filled batch for requests being tokenized.",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.batch_fixed_cost = Gauge(
            "distilserve_batch_fixed_cost_seconds",
            "Calibrated fixed cost of one model batch (only with --calibrate-batching).",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.batch_token_cost = Gauge(
            "distilserve_batch_token_cost_seconds",
            "Calibrated cost of one padded token in a model batch (only with --calibrate-batching).",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.batch_memory_limit = Gauge(
            "distilserve_batch_memory_limit_bytes",
            "Estimated memory one batch of the model may use: its share of the memory budget.",
            ["model"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.memory_split_batches = Counter(
            "distilserve_memory_split_batches",
            "Planned batches cut smaller to fit the memory budget.",
            ["model"],
            registry=r,
        )
        self.memory_releases = Counter(
            "distilserve_memory_releases",
            "Times a model's engine gave its batch memory back to the system, by reason: idle (no "
            "batch for --memory-release-idle-s) or budget (the process above its release mark).",
            ["model", "reason"],
            registry=r,
        )
        self.resident_memory = Gauge(
            "distilserve_memory_resident_bytes",
            "Resident memory (RSS) of the server process, read at each scrape.",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.memory_budget = Gauge(
            "distilserve_memory_budget_bytes",
            "Memory the server process may use (--memory-budget-mb, or the cgroup limit / workers).",
            multiprocess_mode="liveall",
            registry=r,
        )
        self.dropped_spans = Counter(
            "distilserve_dropped_spans",
            "Trace spans dropped: the export queue was full (queue_full) or the export failed "
            "(export_failed). Only with tracing on (--otlp-endpoint).",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "distilserve_model_info",
            "Served models (value 1), with their task, quantization and engine.",
            ["model", "task", "quantization", "engine"],
            multiprocess_mode="livemax",
            registry=r,
        )

    content_type = CONTENT_TYPE_LATEST

    def exposition(self) -> bytes:
        """The text /metrics answers: this app's registry, or every worker's values in worker mode."""
        resident = resident_bytes()
        if resident is not None:
            self.resident_memory.set(resident)
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        collected = CollectorRegistry()
        MultiProcessCollector(collected, path=self.multiprocess_dir)
        return generate_latest(collected)
