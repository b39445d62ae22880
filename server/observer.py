"""One observer behind every metric and trace: the request path reports its stages here.

Each stage of a request is timed once, where it happens, and reported to the app's
``Observer``:

==============  ==============================================  =================================
stage           reported by                                     method
==============  ==============================================  =================================
arrival         ``middleware.ObservingMiddleware``              ``request_arrived``
admission       ``admission.Admission.admit``                   ``admitted`` / ``refused``
tokenize        ``pipeline.InferencePipeline``                  ``tokenized``
queued          ``batching.DynamicBatcher`` (first batch)       ``queued``
batch           ``batching.DynamicBatcher``                     ``batch_planned`` / ``batch_ran``
finish          ``pipeline.InferencePipeline``                  ``finished``
answer / error  ``middleware.ObservingMiddleware``              ``answered``
==============  ==============================================  =================================

plus what is not a stage of one request (queue depth, requests in flight, skipped rows,
timeouts, disconnects, the batch costs in use, the models loaded).

``PrometheusObserver`` turns them into today's ``distilserve_*`` metrics;
``distilserve.server.tracing.TracingObserver`` into OpenTelemetry spans; ``CompositeObserver``
fans out to both when tracing is on. With tracing off the app holds the Prometheus observer
itself, so a stage costs one method call, as the metric call it replaced did.

What a request carries from stage to stage is its ``RequestTrace``: made on arrival, kept in the
ASGI scope's state and on the request's ``RequestContext``, it holds the request id, the stage
timings (which the timing headers report) and whatever an observer keeps per request (the
OpenTelemetry server span). Times are ``time.perf_counter()`` seconds.
"""

from __future__ import annotations

import contextvars
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from distilserve.models.batch_cost import BatchCost
from distilserve.server.metrics import ServerMetrics

# The request id of the request whose work runs now (log lines carry it: distilserve.log_config).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "distilserve_request_id", default=None
)

# The key, in the request's state (``scope["state"]``), of its ``RequestTrace``.
TRACE = "trace"


OTLP_PROTOCOLS = ("grpc", "http/protobuf")
HTTP_TRACES_PATH = "/v1/traces"


class TracingUnavailableError(RuntimeError):
    """Tracing is asked for and the ``otel`` extra is not installed."""


def resolve_endpoint(
    endpoint: str | None, protocol: str | None, environ: Mapping[str, str] = os.environ
) -> tuple[str, str] | None:
    """The OTLP endpoint and protocol to export to, or None when tracing is off."""
    endpoint = (
        endpoint
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or None
    )
    if endpoint is None:
        return None
    protocol = (
        protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol not in OTLP_PROTOCOLS:
        raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(OTLP_PROTOCOLS)}")
    if protocol == "http/protobuf" and urlparse(endpoint).path in ("", "/"):
        # A base address, as OTEL_EXPORTER_OTLP_ENDPOINT is: the traces live under /v1/traces.
        endpoint = endpoint.rstrip("/") + HTTP_TRACES_PATH
    return endpoint, protocol


def build_observer(
    metrics: ServerMetrics, otlp_endpoint: str | None, otlp_protocol: str | None, *, version: str
) -> Observer:
    """The metrics' observer, and the tracing one beside it when an OTLP endpoint is set."""
    prometheus = PrometheusObserver(metrics)
    target = resolve_endpoint(otlp_endpoint, otlp_protocol)
    if target is None:
        return prometheus  # no fan-out at all when tracing is off
    check_tracing_installed()
    from distilserve.server.tracing import build_tracing_observer

    return CompositeObserver([prometheus, build_tracing_observer(*target, metrics, version=version)])


def check_tracing_installed() -> None:
    if (
        importlib.util.find_spec("opentelemetry.sdk") is None
        or importlib.util.find_spec("opentelemetry.exporter.otlp") is None
    ):
        raise TracingUnavailableError(
            "tracing (--otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT) needs the OpenTelemetry packages: "
            "pip install 'distilserve[otel]'"
        )


class RequestTrace:
    """One request's id, the stage timings it reports in its headers, and the observers' state."""

    __slots__ = (
        "arrived",
        "error_code",
        "inference_s",
        "items",
        "model",
        "queue_s",
        "request_id",
        "span",
        "task",
        "tokenization_s",
        "tokens",
    )

    def __init__(self, request_id: str, arrived: float) -> None:
        self.request_id = request_id
        self.arrived = arrived
        self.model = ""
        self.task = ""
        self.items = 0
        self.tokens = 0
        self.tokenization_s = 0.0
        self.queue_s = 0.0  # queued until its first row's batch started
        self.inference_s = 0.0  # first batch started until its last row was computed
        self.error_code: str | None = None
        self.span: Any = None  # the OpenTelemetry server span, when tracing


class BatchReport:
    """One batch, as the batcher planned and ran it: its shape and the requests it served."""

    __slots__ = ("model", "padded_tokens", "rows", "tokens", "traces")

    def __init__(
        self, model: str, rows: int, tokens: int, padded_tokens: int, traces: list[RequestTrace]
    ) -> None:
        self.model = model
        self.rows = rows
        self.tokens = tokens
        # The tokens the graph computes: rows x longest when padded, the packed plan's rows x
        # width when packed (distilserve.models.packing.packed_tokens).
        self.padded_tokens = padded_tokens
        self.traces = traces  # one per request with rows in it (warm-up rows have none)


class Observer:
    """The stage events; every method does nothing here, so an observer implements what it uses."""

    # One request's stages.
    def request_arrived(self, trace: RequestTrace, scope: Any) -> None: ...

    def admitted(self, trace: RequestTrace | None, started: float, ended: float) -> None: ...

    def refused(self, trace: RequestTrace | None, model: str, reason: str) -> None: ...

    def tokenized(
        self,
        trace: RequestTrace | None,
        model: str,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None: ...

    def queued(self, trace: RequestTrace | None, model: str, enqueued: float, started: float) -> None: ...

    def finished(
        self, trace: RequestTrace | None, started: float, ended: float, error: BaseException | None
    ) -> None: ...

    def answered(self, trace: RequestTrace, route: str, status: int, ended: float) -> None: ...

    def timed_out(self, trace: RequestTrace | None, model: str) -> None: ...

    def cancelled(self, trace: RequestTrace | None, model: str) -> None: ...

    # Batches.
    def batch_planned(self, batch: BatchReport) -> None: ...

    def batch_ran(
        self, batch: BatchReport, started: float, ended: float, error: BaseException | None
    ) -> None: ...

    def rows_skipped(self, model: str, rows: int) -> None: ...

    # State.
    def queue_changed(self, model: str, rows: int, tokens: int) -> None: ...

    def inflight_changed(self, requests: int) -> None: ...

    def batching_costs(
        self, model: str, overhead_tokens: int, max_wait_s: float, cost: BatchCost | None
    ) -> None: ...

    def model_loaded(self, model: str, task: str, quantization: str, engine: str) -> None: ...

    def memory_budget(self, budget_bytes: int) -> None: ...

    def batch_memory_limit(self, model: str, limit_bytes: int) -> None: ...

    def memory_split_batch(self, model: str) -> None:
        """A planned batch cut smaller to fit the model's share of the memory budget."""

    def memory_released(self, model: str, reason: str) -> None:
        """The model's engine gave back what its batches left it holding: ``reason`` "idle" (no
        batch for the idle time) or "budget" (the process above its release mark)."""

    def answered_fast(self, path: str, status: int) -> None:
        """An answer ``distilserve.server.http_protocol`` wrote without the app (no trace)."""

    def close(self) -> None:
        """Flush and stop what the observer runs in the background (the span export)."""


class PrometheusObserver(Observer):
    """Today's ``distilserve_*`` metrics, with their names and meaning (``ServerMetrics``)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def refused(self, trace: RequestTrace | None, model: str, reason: str) -> None:
        self.metrics.rejected.labels(model, reason).inc()

    def tokenized(
        self,
        trace: RequestTrace | None,
        model: str,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None:
        self.metrics.tokenization.labels(model).observe(ended - started)

    def queued(self, trace: RequestTrace | None, model: str, enqueued: float, started: float) -> None:
        self.metrics.queue_wait.labels(model).observe(started - enqueued)

    def answered(self, trace: RequestTrace, route: str, status: int, ended: float) -> None:
        self.metrics.requests.labels(trace.model, route, str(status)).inc()
        self.metrics.request_latency.labels(trace.model, route).observe(ended - trace.arrived)

    def answered_fast(self, path: str, status: int) -> None:
        self.metrics.requests.labels("", path, str(status)).inc()

    def timed_out(self, trace: RequestTrace | None, model: str) -> None:
        self.metrics.timed_out.labels(model).inc()

    def cancelled(self, trace: RequestTrace | None, model: str) -> None:
        self.metrics.cancelled.labels(model).inc()

    def batch_planned(self, batch: BatchReport) -> None:
        metrics, model, padded = self.metrics, batch.model, batch.padded_tokens
        metrics.batch_size.labels(model).observe(batch.rows)
        metrics.batch_tokens.labels(model).observe(padded)
        metrics.padding_ratio.labels(model).observe(1.0 - batch.tokens / padded)

    def batch_ran(
        self, batch: BatchReport, started: float, ended: float, error: BaseException | None
    ) -> None:
        self.metrics.inference.labels(batch.model).observe(ended - started)

    def rows_skipped(self, model: str, rows: int) -> None:
        self.metrics.skipped_rows.labels(model).inc(rows)

    def queue_changed(self, model: str, rows: int, tokens: int) -> None:
        self.metrics.queue_depth.labels(model).set(rows)
        self.metrics.queue_tokens.labels(model).set(tokens)

    def inflight_changed(self, requests: int) -> None:
        self.metrics.inflight_requests.set(requests)

    def batching_costs(
        self, model: str, overhead_tokens: int, max_wait_s: float, cost: BatchCost | None
    ) -> None:
        metrics = self.metrics
        metrics.batch_overhead_tokens.labels(model).set(overhead_tokens)
        metrics.batch_max_wait.labels(model).set(max_wait_s)
        if cost is not None:
            metrics.batch_fixed_cost.labels(model).set(cost.fixed_s)
            metrics.batch_token_cost.labels(model).set(cost.per_token_s)

    def model_loaded(self, model: str, task: str, quantization: str, engine: str) -> None:
        self.metrics.model_info.labels(model, task, quantization, engine).set(1)

    def memory_budget(self, budget_bytes: int) -> None:
        self.metrics.memory_budget.set(budget_bytes)

    def batch_memory_limit(self, model: str, limit_bytes: int) -> None:
        self.metrics.batch_memory_limit.labels(model).set(limit_bytes)

    def memory_split_batch(self, model: str) -> None:
        self.metrics.memory_split_batches.labels(model).inc()

    def memory_released(self, model: str, reason: str) -> None:
        self.metrics.memory_releases.labels(model, reason).inc()


class CompositeObserver(Observer):
    """Every event to each of ``observers``, in order (Prometheus first: its figures never wait)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)
        # Each method fans out; generated once here rather than written out 17 times.
        for name, value in vars(Observer).items():
            if callable(value) and not name.startswith("_"):
                setattr(self, name, _fan_out([getattr(observer, name) for observer in self.observers]))


def _fan_out(methods: list[Any]) -> Any:
    def each(*args: Any) -> None:
        for method in methods:
            method(*args)

    return each
