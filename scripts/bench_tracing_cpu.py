"""The CPU time tracing costs per request, without a server: ``TracingObserver`` fed one request's
stage events at a time (arrival, admission, tokenize, queue, a 16th of a batch, postprocess,
answer), its spans handed to a processor that keeps them, then the OTLP encoding of those spans.

Two ways of making the stage spans, in one run, interleaved: through the SDK's live spans (the
observer without a processor, as before) and made finished (``TracingObserver._finished_child``,
what the server runs). Prints the median over ROUNDS of microseconds per request on the request
path and per span to encode. Throughput with a server is ``scripts/bench_tracing.py``.

    python scripts/bench_tracing_cpu.py [REQUESTS] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from distilserve.server.observer import BatchReport, RequestTrace
from distilserve.server.tracing import TracingObserver

SCOPE = {
    "method": "POST",
    "path": "/v1/classify",
    "scheme": "http",
    "headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"), (b"user-agent", b"wrk")],
}


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def one_round(requests: int, finished_children: bool) -> tuple[float, float, int]:
    """(us per request on the request path, us per span to encode, spans)."""
    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    observer = TracingObserver(provider, keep if finished_children else None)  # type: ignore[arg-type]
    observer.model_loaded("sst2", "text-classification", "int8", "onnxruntime")
    batch: list[RequestTrace] = []
    started = time.perf_counter()
    for index in range(requests):
        now = time.perf_counter()
        request = RequestTrace(str(index), now)
        observer.request_arrived(request, SCOPE)
        observer.admitted(request, now, now)
        request.model, request.task, request.items, request.tokens = "sst2", "text-classification", 1, 12
        observer.tokenized(request, "sst2", now, now, None)
        observer.queued(request, "sst2", now, now)
        batch.append(request)
        if len(batch) == 16:
            observer.batch_ran(BatchReport("sst2", 16, 192, 256, batch), now, now, None)
            batch = []
        observer.finished(request, now, now, None)
        observer.answered(request, "/v1/classify", 200, now)
    path_us = (time.perf_counter() - started) / requests * 1e6
    spans: Sequence[ReadableSpan] = keep.spans
    started = time.perf_counter()
    encode_spans(spans).SerializeToString()
    encode_us = (time.perf_counter() - started) / len(spans) * 1e6
    provider.shutdown()
    return path_us, encode_us, len(spans)


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    results: dict[str, list[tuple[float, float, int]]] = {"sdk": [], "finished": []}
    for _ in range(rounds):
        results["sdk"].append(one_round(requests, finished_children=False))
        results["finished"].append(one_round(requests, finished_children=True))
    medians = {}
    for name, runs in results.items():
        path = statistics.median(run[0] for run in runs)
        encode = statistics.median(run[1] for run in runs)
        per_request = runs[0][2] / requests
        medians[name] = (path, encode, per_request)
        print(
            f"{name:9s} request path {path:6.1f} us/request, encoding {encode:5.1f} us/span, "
            f"{per_request:.2f} spans/request: {path + encode * per_request:6.1f} us/request in all"
        )
    sdk, finished = medians["sdk"], medians["finished"]
    total = [m[0] + m[1] * m[2] for m in (sdk, finished)]
    print(f"finished / sdk: request path {finished[0] / sdk[0]:.2f}, in all {total[1] / total[0]:.2f}")


if __name__ == "__main__":
    main()
