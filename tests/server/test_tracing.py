"""OpenTelemetry traces, sent to real OTLP receivers (gRPC and HTTP) that the tests start.

Every check is ordered by events: the server's span processor's ``force_flush`` returns once the
receiver has answered the export, and a stopped receiver fails the export it is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from fastapi import FastAPI

from distilserve.models import ModelRuntime
from distilserve.server import clock
from distilserve.server.observer import CompositeObserver, resolve_endpoint
from distilserve.server.tracing import TracingObserver
from tests.server.conftest import running_app, state_of
from tests.server.otlp_receivers import ReceivedSpan, SpanStore, grpc_receiver, http_receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
STAGES = {"admission", "tokenize", "queue", "postprocess"}


def tracing_of(app: FastAPI) -> TracingObserver:
    observer = state_of(app).observer
    assert isinstance(observer, CompositeObserver)
    (tracing,) = [each for each in observer.observers if isinstance(each, TracingObserver)]
    return tracing


async def flush(app: FastAPI) -> None:
    processor = tracing_of(app).processor
    assert processor is not None
    await asyncio.to_thread(processor.force_flush)


def dropped_spans(app: FastAPI) -> float:
    registry = state_of(app).metrics.registry
    return sum(
        registry.get_sample_value("distilserve_dropped_spans_total", {"reason": reason}) or 0.0
        for reason in ("queue_full", "export_failed")
    )


def server_span(store: SpanStore, request_id: str) -> ReceivedSpan:
    (span,) = [span for span in store.spans if span.attributes.get("distilserve.request_id") == request_id]
    return span


async def test_a_request_is_a_span_tree_continuing_the_clients_trace_over_grpc(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "distilserve-under-test")
    with grpc_receiver() as receiver:
        async with running_app(model_args, otlp_endpoint=receiver.endpoint) as (app, client):
            continued = client.post(
                "/v1/embeddings",
                json={"input": ["one text", "and another one"]},
                headers={"traceparent": TRACEPARENT, "x-request-id": "continued"},
            )
            fresh = client.post(
                "/v1/classify", json={"input": "a fine film"}, headers={"x-request-id": "fresh"}
            )
            responses = await asyncio.gather(continued, fresh)
            assert [response.status_code for response in responses] == [200, 200]
            await flush(app)
        store = receiver.store

    span = server_span(store, "continued")
    assert span.name == "POST /v1/embeddings"
    assert span.span.kind == span.span.SPAN_KIND_SERVER
    assert (span.trace_id, span.parent_id) == (TRACE_ID, CLIENT_SPAN_ID)  # the client's trace goes on
    assert span.resource["service.name"] == "distilserve-under-test"
    attributes = span.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/embeddings"
    assert attributes["http.response.status_code"] == 200
    assert attributes["distilserve.model"] == "encoder"
    assert attributes["distilserve.task"] == "feature-extraction"
    assert attributes["distilserve.items"] == 2
    assert attributes["distilserve.tokens"] > 2
    assert attributes["distilserve.engine"] == "onnxruntime"
    assert "error.type" not in attributes and not span.is_error

    children = store.children_of(span)
    assert set(children) == STAGES
    for child in children.values():  # each stage lies inside its request
        assert span.span.start_time_unix_nano <= child.span.start_time_unix_nano
        assert (
            child.span.start_time_unix_nano <= child.span.end_time_unix_nano <= span.span.end_time_unix_nano
        )
    assert children["tokenize"].attributes["distilserve.items"] == 2

    other = server_span(store, "fresh")
    assert other.name == "POST /v1/classify"
    assert other.trace_id != TRACE_ID and other.parent_id == ""  # a trace of its own
    assert set(store.children_of(other)) == STAGES

    # Each batch is a span of its own, linked to every request it served (never their parent).
    linked: dict[tuple[str, str], ReceivedSpan] = {}
    for batch in store.named("batch"):
        assert batch.parent_id == ""
        for link in batch.span.links:
            linked[(link.trace_id.hex(), link.span_id.hex())] = batch
    embed_batch = linked[(span.trace_id, span.span_id)]
    assert embed_batch.attributes["distilserve.model"] == "encoder"
    assert embed_batch.attributes["distilserve.batch.rows"] == 2
    assert embed_batch.attributes["distilserve.batch.padded_tokens"] >= attributes["distilserve.tokens"]
    assert embed_batch.attributes["distilserve.engine"] == "onnxruntime"
    assert linked[(other.trace_id, other.span_id)].attributes["distilserve.model"] == "sentiment"


async def test_traces_go_over_otlp_http_too(model_args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with http_receiver() as receiver:
        # A base address, as OTEL_EXPORTER_OTLP_ENDPOINT gives one: the traces go to /v1/traces.
        async with running_app(model_args, otlp_endpoint=receiver.endpoint) as (app, client):
            response = await client.post(
                "/embed",
                json={"inputs": "one text"},
                headers={"traceparent": TRACEPARENT, "x-request-id": "h"},
            )
            assert response.status_code == 200
            await flush(app)
        span = server_span(receiver.store, "h")
        assert span.name == "POST /embed" and span.trace_id == TRACE_ID
        assert set(receiver.store.children_of(span)) == STAGES
        assert span.resource["service.name"] == "distilserve"


class MovableClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_a_4xx_and_a_504_are_recorded_as_errors(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = MovableClock()
    monkeypatch.setattr(clock, "now", moved)
    real_prepare = ModelRuntime.prepare

    def prepare(self: ModelRuntime, item: Any, *args: Any) -> Any:
        result = real_prepare(self, item, *args)
        if item == "late":
            moved.offset += 10.0  # tokenizing it took 10 s: its 5 s deadline passed
        return result

    monkeypatch.setattr(ModelRuntime, "prepare", prepare)
    with grpc_receiver() as receiver:
        async with running_app(model_args, otlp_endpoint=receiver.endpoint) as (app, client):
            empty = await client.post(
                "/v1/classify",
                json={"input": "word " * 400, "truncate": False},
                headers={"x-request-id": "e"},
            )
            late = await client.post(
                "/v1/classify",
                json={"input": "late"},
                headers={"x-request-id": "l", "x-request-timeout": "5"},
            )
            assert (empty.status_code, late.status_code) == (422, 504)
            await flush(app)
        store = receiver.store

    client_error = server_span(store, "e")
    # A 4xx is the client's error: error.type names it, a SERVER span's status stays unset...
    assert client_error.attributes["http.response.status_code"] == 422
    assert client_error.attributes["error.type"] == "422"
    assert not client_error.is_error
    # ... and the stage that refused the input records the exception as an error.
    tokenize = store.children_of(client_error)["tokenize"]
    assert tokenize.is_error
    assert [event.name for event in tokenize.span.events] == ["exception"]
    assert "queue" not in store.children_of(client_error)

    timed_out = server_span(store, "l")
    assert timed_out.attributes["http.response.status_code"] == 504
    assert timed_out.attributes["error.type"] == "504"
    assert timed_out.is_error  # a 5xx is the server's


async def test_a_receiver_stopped_mid_run_fails_no_request_and_counts_the_dropped_spans(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds: a failed export gives up soon
    receiver_context = grpc_receiver()
    receiver = receiver_context.__enter__()
    try:
        async with running_app(model_args, otlp_endpoint=receiver.endpoint) as (app, client):
            first = await client.post("/v1/classify", json={"input": "before"}, headers={"x-request-id": "b"})
            await flush(app)
            assert first.status_code == 200 and server_span(receiver.store, "b")
            assert dropped_spans(app) == 0
            receiver.stop()  # the collector goes down
            caplog.set_level(logging.WARNING, logger="distilserve.server.tracing")
            later = await asyncio.gather(
                *(client.post("/v1/classify", json={"input": f"after {n}"}) for n in range(4))
            )
            assert [response.status_code for response in later] == [200] * 4
            await flush(app)  # the export fails: its spans are dropped and counted
            after_first = dropped_spans(app)
            assert after_first >= 4 * (1 + len(STAGES))
            more = await client.post("/v1/embeddings", json={"input": "still answered"})
            assert more.status_code == 200
            await flush(app)
            assert dropped_spans(app) > after_first
    finally:
        receiver_context.__exit__(None, None, None)
    drops_logged = [record for record in caplog.records if "dropping trace spans" in record.getMessage()]
    assert len(drops_logged) == 1  # logged once, counted always


async def test_a_hung_export_fills_the_bounded_queue_and_never_holds_a_request(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with grpc_receiver() as receiver:
        async with running_app(model_args, otlp_endpoint=receiver.endpoint) as (app, client):
            processor = tracing_of(app).processor
            assert processor is not None
            monkeypatch.setattr(processor, "max_queue_size", 3)
            processor._export_lock.acquire()  # an export that hangs: a collector that never answers
            try:
                responses = await asyncio.gather(
                    *(client.post("/v1/classify", json={"input": "x"}) for _ in range(3))
                )
                assert [response.status_code for response in responses] == [200] * 3
                registry = state_of(app).metrics.registry
                queue_full = registry.get_sample_value(
                    "distilserve_dropped_spans_total", {"reason": "queue_full"}
                )
                # One span per request and per stage, and one per batch: the three requests may
                # share batches or not, so the batches are counted, not assumed.
                batches = registry.get_sample_value("distilserve_batch_size_count", {"model": "sentiment"})
                assert batches is not None and 1 <= batches <= 3
                assert queue_full == 3 * (1 + len(STAGES)) + batches - 3  # all but the 3 the queue holds
            finally:
                processor._export_lock.release()
            await flush(app)
        assert len(receiver.store.spans) == 3


async def test_tracing_is_off_without_an_endpoint(
    model_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    async with running_app(model_args) as (app, client):
        assert not isinstance(state_of(app).observer, CompositeObserver)  # only the metrics observer
        response = await client.post(
            "/v1/classify", json={"input": "x"}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200


def test_the_otlp_endpoint_and_protocol_come_from_the_flag_or_the_otel_variables() -> None:
    assert resolve_endpoint(None, None, {}) is None
    assert resolve_endpoint("http://c:4317", None, {}) == ("http://c:4317", "grpc")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert resolve_endpoint(None, None, env) == ("http://c:4318/v1/traces", "http/protobuf")
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:4318/custom"
    assert resolve_endpoint(None, None, env) == ("http://t:4318/custom", "http/protobuf")
    assert resolve_endpoint("http://f:4317", "grpc", env) == ("http://f:4317", "grpc")  # the flag wins
    with pytest.raises(ValueError, match="protocol"):
        resolve_endpoint("http://c:4317", "http/json", {})


async def test_the_request_id_is_in_the_requests_log_lines(model_args: list[str]) -> None:
    from distilserve.log_config import RequestIdFilter

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("distilserve.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        async with running_app(model_args, access_log=True) as (_, client):
            response = await client.post(
                "/v1/classify", json={"input": "x"}, headers={"x-request-id": "log-me"}
            )
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert response.headers["x-request-id"] == "log-me"
    assert [getattr(record, "request_id", None) for record in records] == ["log-me"]


def test_spans_name_the_engine_each_model_was_loaded_on() -> None:
    """Models run on ONNX Runtime or OpenVINO, chosen per model (``--engine``): each span says
    which, from the observer's ``model_loaded``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from distilserve.server.observer import BatchReport, RequestTrace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = TracingObserver(provider)
    observer.model_loaded("reader", "question-answering", "int8", "openvino")
    observer.model_loaded("sentiment", "text-classification", "int8", "onnxruntime")
    for request_id, model in (("on-openvino", "reader"), ("on-onnxruntime", "sentiment")):
        request = RequestTrace(request_id, 1.0)
        request.span = observer.tracer.start_span("POST", attributes={"http.request.method": "POST"})
        request.model, request.task = model, "any"
        observer.batch_ran(BatchReport(model, 1, 4, 4, [request]), 2.0, 3.0, None)
        observer.answered(request, "/v1/any", 200, 4.0)
    engines = {
        (span.name, span.attributes["distilserve.model"]): span.attributes["distilserve.engine"]
        for span in exporter.get_finished_spans()
    }
    assert engines == {
        ("batch", "reader"): "openvino",
        ("POST /v1/any", "reader"): "openvino",
        ("batch", "sentiment"): "onnxruntime",
        ("POST /v1/any", "sentiment"): "onnxruntime",
    }
    provider.shutdown()


# Run in its own interpreter: it sets OpenTelemetry's global tracer provider, which stays set.
FASTAPI_SPANS = """
import sys
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient

from distilserve.server.app import native_telemetry_off

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
for name, options in (("plain", {}), ("distilserve", native_telemetry_off())):
    app = FastAPI(**options)
    app.get("/ping")(lambda: {"ok": True})
    with TestClient(app) as client:
        assert client.get("/ping").status_code == 200
    print(name, len(exporter.get_finished_spans()))
    exporter.clear()
"""


def test_fastapis_own_telemetry_is_off_so_the_observer_is_the_only_source_of_spans() -> None:
    import subprocess
    import sys

    ran = subprocess.run([sys.executable, "-c", FASTAPI_SPANS], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]
    counts = dict(line.split() for line in ran.stdout.splitlines())
    # A plain FastAPI traces the request to a global provider; the server's app does not.
    assert int(counts["plain"]) > 0, ran.stdout
    assert counts["distilserve"] == "0", ran.stdout
