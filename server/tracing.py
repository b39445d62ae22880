"""OpenTelemetry tracing: the observer's stage events as spans, exported over OTLP.

Off by default. ``--otlp-endpoint`` (``DISTILSERVE_OTLP_ENDPOINT``) switches it on; without it,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` do. The protocol is
``--otlp-protocol``, else ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``, else gRPC; the service name
``OTEL_SERVICE_NAME`` (``OTEL_RESOURCE_ATTRIBUTES``), else ``distilserve``; the sampler
``OTEL_TRACES_SAMPLER`` (and ``_ARG``), else parent-based always-on; the propagator
``OTEL_PROPAGATORS``, else W3C ``traceparent`` (and baggage).

The packages are the ``otel`` extra (``pip install 'distilserve[otel]'``): this module imports
them, and only ``build_tracing_observer`` imports this module, when tracing is on.

Spans (times are the stages' own, taken once by the code that runs them):

* ``{method} {route}``, kind SERVER, per request, the child of an incoming ``traceparent``; its
  children ``admission``, ``tokenize``, ``queue`` (its rows queued until their first batch)
  and ``postprocess``;
* ``batch`` per model batch, a root span with a link to the server span of every request it
  served (a batch serves many requests, so a parent would be wrong).

Errors follow the HTTP semantic conventions: every answer sets ``http.response.status_code``;
an error answer sets ``error.type`` (its status); a 5xx sets the server span's status to
ERROR (a 4xx is the client's error, which leaves a SERVER span's status unset); the stage that
raised records the exception and its own ERROR status, 4xx or not.

A collector that is down or slow never fails or slows a request: a span is appended to a
bounded queue when it ends, and a background thread exports it in batches. A span that finds
the queue full, or whose export failed, is dropped and counted in
``distilserve_dropped_spans_total`` (by reason); the first drop is logged, the rest only counted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from distilserve.server.metrics import ServerMetrics
from distilserve.server.observer import BatchReport, Observer, RequestTrace

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "distilserve"
# How long the server's shutdown waits for the export thread, then for a hung export.
SHUTDOWN_WAIT_S = 5.0

# Attribute names: the HTTP semantic conventions' where they have one, ``distilserve.*`` otherwise.
MODEL = "distilserve.model"
TASK = "distilserve.task"
ITEMS = "distilserve.items"
TOKENS = "distilserve.tokens"
ENGINE_ATTRIBUTE = "distilserve.engine"
TRACER_NAME = "distilserve.server"
# For a model the observer was not told of (a span can only come from a loaded model).
UNKNOWN_ENGINE = "unknown"
REQUEST_ID = "distilserve.request_id"
BATCH_ROWS = "distilserve.batch.rows"
BATCH_TOKENS = "distilserve.batch.tokens"
BATCH_PADDED_TOKENS = "distilserve.batch.padded_tokens"
BATCH_REQUESTS = "distilserve.batch.requests"


def make_exporter(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint)


def service_resource(version: str) -> Resource:
    """The process's resource; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win."""
    attributes: dict[str, Any] = {SERVICE_VERSION: version}
    if SERVICE_NAME not in OTELResourceDetector().detect().attributes:
        attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
    return Resource.create(attributes)


class BoundedExportProcessor(SpanProcessor):
    """Ended spans into a bounded queue; one background thread exports them in batches.

    ``on_end`` (on the event loop) only appends, so an export that hangs or fails costs a request
    nothing; what does not fit, or fails to export, is dropped and counted.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        metrics: ServerMetrics,
        *,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay_s: float = 1.0,
    ) -> None:
        self.exporter = exporter
        self.dropped = metrics.dropped_spans
        self.max_queue_size = max_queue_size
        self.max_export_batch_size = max_export_batch_size
        self.schedule_delay_s = schedule_delay_s
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopping = False
        self._drop_logged = False
        self._worker = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._worker.start()

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping:
            return
        if len(self._queue) >= self.max_queue_size:
            self._drop(1, "queue_full")
            return
        self._queue.append(span)
        if len(self._queue) >= self.max_export_batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.schedule_delay_s)
            self._wake.clear()
            self._export_all()

    def _export_all(self) -> None:
        with self._export_lock:
            self._export_queued()

    def _export_queued(self) -> None:
        while self._queue:
            count = min(len(self._queue), self.max_export_batch_size)
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                result = self.exporter.export(batch)
            except Exception:  # an exporter bug must not end the export thread
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                self._drop(len(batch), "export_failed")

    def _drop(self, spans: int, reason: str) -> None:
        self.dropped.labels(reason).inc(spans)
        if not self._drop_logged:
            self._drop_logged = True
            logger.warning(
                "dropping trace spans: the collector is unreachable, slow or refusing them; "
                "further drops are only counted in distilserve_dropped_spans_total",
                extra={"reason": reason, "spans": spans},
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now (tests order their checks with it)."""
        self._export_all()
        return True

    def shutdown(self) -> None:
        """Export what is queued, within bounds: an export stuck on a dead collector is not
        waited for beyond ``SHUTDOWN_WAIT_S`` (twice), and what it holds is lost."""
        self._stopping = True
        self._wake.set()
        self._worker.join(timeout=SHUTDOWN_WAIT_S)
        if self._export_lock.acquire(timeout=SHUTDOWN_WAIT_S):
            try:
                self._export_queued()
            finally:
                self._export_lock.release()
        self.exporter.shutdown()


def _header_getter_carrier(scope: Any) -> dict[str, str]:
    """The request's headers as the propagator reads them (lower-case names)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}


class TracingObserver(Observer):
    """The stage events as OpenTelemetry spans (see the module's documentation)."""

    def __init__(
        self,
        provider: TracerProvider,
        processor: BoundedExportProcessor | None = None,
        extra_processors: Sequence[SpanProcessor] = (),
    ) -> None:
        """``processor`` (with ``extra_processors``) is every processor ``provider`` has: the stage
        spans are handed to them finished (``_child``). Without one, they go through the SDK."""
        self.provider = provider
        self.processor = processor
        self.tracer = provider.get_tracer(TRACER_NAME)
        self._finished_sinks: tuple[SpanProcessor, ...] = (
            () if processor is None else (processor, *extra_processors)
        )
        # The tracer's own scope (as get_tracer makes it), so that the stage spans are exported
        # in the same scope group as the request spans.
        self._scope = InstrumentationScope(TRACER_NAME, "", "")
        # perf_counter seconds to epoch nanoseconds: the stages are timed on perf_counter.
        self._epoch_offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        # The engine each model runs on (``model_loaded``): ONNX Runtime or OpenVINO, chosen per
        # model at load (``--engine``).
        self.engines: dict[str, str] = {}

    def model_loaded(self, model: str, task: str, quantization: str, engine: str) -> None:
        self.engines[model] = engine

    def _ns(self, seconds: float) -> int:
        return int(seconds * 1e9) + self._epoch_offset_ns

    def _child(
        self,
        trace_: RequestTrace | None,
        name: str,
        started: float,
        ended: float,
        attributes: dict[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        parent = None if trace_ is None else trace_.span
        if parent is None or not parent.is_recording():
            return
        if self._finished_sinks:
            self._finished_child(parent, name, started, ended, attributes, error)
            return
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            start_time=self._ns(started),
            attributes=attributes,
        )
        if error is not None:
            _record_error(span, error)
        span.end(end_time=self._ns(ended))

    def _finished_child(
        self,
        parent: Any,
        name: str,
        started: float,
        ended: float,
        attributes: dict[str, Any] | None,
        error: BaseException | None,
    ) -> None:
        """A stage span, made finished: a stage is reported once it has ended, so the SDK's
        live span (its lock, sampler call, attribute cleaning, start and end) is not needed.
        That was most of tracing's cost on the request path: 4 of a request's 5 spans, 140 us a
        request through the SDK (scripts/bench_tracing.py has the throughput). The child takes
        its parent's trace and sampling decision, as the SDK's default parent-based sampler
        would give it."""
        parent_context = parent.get_span_context()
        status = Status(StatusCode.UNSET)
        events: tuple[Event, ...] = ()
        attributes = dict(attributes) if attributes else {}
        if error is not None:
            events = (
                Event(
                    "exception",
                    {"exception.type": type(error).__qualname__, "exception.message": str(error)},
                    timestamp=self._ns(ended),
                ),
            )
            attributes["error.type"] = _error_type(error)
            status = Status(StatusCode.ERROR, str(error)[:200])
        span = ReadableSpan(
            name,
            context=SpanContext(
                parent_context.trace_id,
                self.provider.id_generator.generate_span_id(),
                is_remote=False,
                trace_flags=parent_context.trace_flags,
                trace_state=parent_context.trace_state,
            ),
            parent=parent_context,
            resource=self.provider.resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=self._ns(started),
            end_time=self._ns(ended),
            instrumentation_scope=self._scope,
        )
        for sink in self._finished_sinks:
            sink.on_end(span)

    def request_arrived(self, trace_: RequestTrace, scope: Any) -> None:
        method = scope.get("method", "")
        parent = propagate.extract(_header_getter_carrier(scope))
        trace_.span = self.tracer.start_span(
            method,  # renamed "{method} {route}" once the route is known
            context=parent,
            kind=SpanKind.SERVER,
            start_time=self._ns(trace_.arrived),
            attributes={
                "http.request.method": method,
                "url.path": scope.get("path", ""),
                "url.scheme": scope.get("scheme", "http"),
                REQUEST_ID: trace_.request_id,
            },
        )

    def admitted(self, trace_: RequestTrace | None, started: float, ended: float) -> None:
        self._child(trace_, "admission", started, ended)

    def refused(self, trace_: RequestTrace | None, model: str, reason: str) -> None:
        if trace_ is not None and trace_.span is not None and trace_.span.is_recording():
            now = time.perf_counter()
            self._child(trace_, "admission", now, now, {"distilserve.refused": reason}, QueueFull(reason))

    def tokenized(
        self,
        trace_: RequestTrace | None,
        model: str,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None:
        if trace_ is not None:
            self._child(trace_, "tokenize", started, ended, {MODEL: model, ITEMS: trace_.items}, error)

    def queued(self, trace_: RequestTrace | None, model: str, enqueued: float, started: float) -> None:
        if trace_ is not None:
            self._child(trace_, "queue", enqueued, started, {MODEL: model, TOKENS: trace_.tokens})

    def finished(
        self, trace_: RequestTrace | None, started: float, ended: float, error: BaseException | None
    ) -> None:
        self._child(trace_, "postprocess", started, ended, None, error)

    def batch_ran(
        self, batch: BatchReport, started: float, ended: float, error: BaseException | None
    ) -> None:
        links = [
            Link(t.span.get_span_context())
            for t in batch.traces
            if t.span is not None and t.span.get_span_context().trace_flags.sampled
        ]
        if not links:
            return  # no sampled request in it (warm-up, or sampled out): nothing would reach it
        span = self.tracer.start_span(
            "batch",
            context=Context(),
            links=links,
            start_time=self._ns(started),
            attributes={
                MODEL: batch.model,
                ENGINE_ATTRIBUTE: self.engines.get(batch.model, UNKNOWN_ENGINE),
                BATCH_ROWS: batch.rows,
                BATCH_TOKENS: batch.tokens,
                BATCH_PADDED_TOKENS: batch.padded_tokens,
                BATCH_REQUESTS: len(batch.traces),
            },
        )
        if error is not None:
            _record_error(span, error)
        span.end(end_time=self._ns(ended))

    def answered(self, trace_: RequestTrace, route: str, status: int, ended: float) -> None:
        span = trace_.span
        if span is None or not span.is_recording():
            return
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if route != "unmatched":
            attributes["http.route"] = route
            span.update_name(f"{span.attributes.get('http.request.method', '')} {route}".strip())
        if trace_.model:
            engine = self.engines.get(trace_.model, UNKNOWN_ENGINE)
            attributes.update({MODEL: trace_.model, TASK: trace_.task, ENGINE_ATTRIBUTE: engine})
            attributes.update({ITEMS: trace_.items, TOKENS: trace_.tokens})
        if status >= 400:
            attributes["error.type"] = str(status)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end(end_time=self._ns(ended))

    def close(self) -> None:
        self.provider.shutdown()


class QueueFull(Exception):
    """What a refused request's admission span records."""

    status = 429


def _error_type(error: BaseException) -> str:
    status = getattr(error, "status", None)
    return str(status) if status is not None else type(error).__qualname__


def _record_error(span: Any, error: BaseException) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", _error_type(error))
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def build_tracing_observer(
    endpoint: str,
    protocol: str,
    metrics: ServerMetrics,
    *,
    version: str,
    exporter: SpanExporter | None = None,
    processors: Sequence[SpanProcessor] = (),
) -> TracingObserver:
    """A tracer provider of its own (never the global one: several apps may share a process)."""
    # The exporters log every failed export; the processor logs the first drop and counts the rest.
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    provider = TracerProvider(resource=service_resource(version))  # sampler: OTEL_TRACES_SAMPLER
    processor = BoundedExportProcessor(exporter or make_exporter(endpoint, protocol), metrics)
    provider.add_span_processor(processor)
    for extra in processors:
        provider.add_span_processor(extra)
    logger.info("tracing on", extra={"otlp_endpoint": endpoint, "otlp_protocol": protocol})
    return TracingObserver(provider, processor, processors)
