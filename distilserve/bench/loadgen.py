"""Load generation: closed loop at a fixed concurrency, open loop at a target rate.

Every run is bounded twice, by a request count and by a duration, whichever comes first, and
is preceded by unrecorded warm-up requests. A run reports what a capacity plan needs:
successful requests and items per second, latency percentiles of the successful requests, every
failure counted by its HTTP status (or by the exception that replaced one), and the client's own
CPU time, because on a small machine the client competes with the server for the same cores.

* Closed loop: ``concurrency`` workers, each sending its next request when its last one
  answers. Latency is send to answer.
* Open loop: requests are sent on a schedule (Poisson arrivals at ``rate`` per second, seeded)
  whatever the server does, so a slow server cannot slow the arrivals down; latency is
  measured from the *scheduled* send time (no coordinated omission). A request that would
  exceed ``max_inflight`` is not sent and is counted as ``client_overflow``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from distilserve.bench.client import HttpClient

Mode = Literal["closed", "open"]
OVERFLOW = "client_overflow"
TIMEOUT = "client_timeout"


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One pre-encoded request: the route, the JSON body, and what it asks the model for."""

    path: str
    body: bytes
    items: int
    tokens: int  # unpadded model tokens of its items (special tokens included)
    flops: float = 0.0  # useful operations of those tokens (see gemm_peak.EncoderFlops)


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request of a multi-request turn."""

    path: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ChatTurn(BenchRequest):
    """Several requests that make one user-visible turn: the calls of a stage are sent together,
    each stage after the previous one has answered (a chat message: classify and embed, then
    answer). Its latency is the whole turn's; its outcome the first failure, else ``200``.
    ``path`` and ``body`` are unused."""

    stages: tuple[tuple[Call, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Bounds:
    max_requests: int
    max_duration_s: float
    warmup_requests: int = 0
    request_timeout_s: float = 60.0


@dataclass
class RunResult:
    target: str
    workload: str
    mode: Mode
    concurrency: int | None
    rate: float | None
    sent: int
    ok: int
    errors: dict[str, int]
    duration_s: float
    requests_per_s: float
    items_per_s: float
    tokens_per_s: float
    useful_gops: float
    latency_ms: dict[str, float]
    client_cpu_s: float
    client_cpu_ms_per_request: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Sample:
    latency_s: float
    outcome: str  # "200", "429", or an exception's name
    items: int
    tokens: int
    flops: float


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds (NaN when there is none)."""
    if not latencies_s:
        return {name: float("nan") for name in ("p50", "p90", "p99", "mean", "max")}
    values = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


async def _turn(client: HttpClient, turn: ChatTurn) -> int:
    """Every stage of the turn in order; the first non-2xx status ends it."""
    for stage in turn.stages:
        answers = await asyncio.gather(*(client.post(call.path, call.body) for call in stage))
        for status, _ in answers:
            if not 200 <= status < 300:
                return status
    return 200


async def _send(client: HttpClient, request: BenchRequest, timeout_s: float) -> str:
    try:
        if isinstance(request, ChatTurn):
            status = await asyncio.wait_for(_turn(client, request), timeout_s)
        else:
            status, _ = await asyncio.wait_for(client.post(request.path, request.body), timeout_s)
    except TimeoutError:
        return TIMEOUT
    except (OSError, asyncio.IncompleteReadError) as exc:
        return type(exc).__name__
    return str(status)


def _summarise(
    samples: Sequence[_Sample],
    *,
    target: str,
    workload: str,
    mode: Mode,
    concurrency: int | None,
    rate: float | None,
    duration_s: float,
    cpu_s: float,
) -> RunResult:
    ok = [sample for sample in samples if sample.outcome.startswith("2")]
    errors = Counter(sample.outcome for sample in samples if not sample.outcome.startswith("2"))
    duration = max(duration_s, 1e-9)
    extra: dict[str, float] = {}
    refused = [sample.latency_s for sample in samples if sample.outcome == "429"]
    if refused:
        # How fast the server says no: under overload, refusals must stay cheap.
        summary = latency_summary(refused)
        extra.update(refused_p50_ms=summary["p50"], refused_p99_ms=summary["p99"])
    return RunResult(
        target=target,
        workload=workload,
        mode=mode,
        concurrency=concurrency,
        rate=rate,
        sent=len(samples),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        duration_s=duration_s,
        requests_per_s=len(ok) / duration,
        items_per_s=sum(sample.items for sample in ok) / duration,
        tokens_per_s=sum(sample.tokens for sample in ok) / duration,
        useful_gops=sum(sample.flops for sample in ok) / duration / 1e9,
        latency_ms=latency_summary([sample.latency_s for sample in ok]),
        client_cpu_s=cpu_s,
        client_cpu_ms_per_request=1000.0 * cpu_s / max(len(samples), 1),
        extra=extra,
    )


async def warm_up(client: HttpClient, requests: Sequence[BenchRequest], count: int, parallel: int) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while (index := next(counter)) < count:
            await _send(client, requests[index % len(requests)], 60.0)

    await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, count)))))


async def closed_loop(
    client: HttpClient,
    requests: Sequence[BenchRequest],
    concurrency: int,
    bounds: Bounds,
    *,
    target: str = "",
    workload: str = "",
    offset: int = 0,
) -> RunResult:
    """``concurrency`` workers send the requests in turn (cycling) until a bound is reached."""
    if not requests:
        raise ValueError("no requests to send")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    await warm_up(client, requests, bounds.warmup_requests, concurrency)
    counter = itertools.count()
    samples: list[_Sample] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + bounds.max_duration_s

    async def worker() -> None:
        while (index := next(counter)) < bounds.max_requests and time.perf_counter() < deadline:
            request = requests[(offset + index) % len(requests)]
            sent_at = time.perf_counter()
            outcome = await _send(client, request, bounds.request_timeout_s)
            samples.append(
                _Sample(time.perf_counter() - sent_at, outcome, request.items, request.tokens, request.flops)
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    duration = time.perf_counter() - started
    return _summarise(
        samples,
        target=target,
        workload=workload,
        mode="closed",
        concurrency=concurrency,
        rate=None,
        duration_s=duration,
        cpu_s=time.process_time() - cpu_started,
    )


async def open_loop(
    client: HttpClient,
    requests: Sequence[BenchRequest],
    rate: float,
    bounds: Bounds,
    *,
    max_inflight: int = 512,
    seed: int = 0,
    target: str = "",
    workload: str = "",
) -> RunResult:
    """Poisson arrivals at ``rate`` requests per second until a bound is reached."""
    if not requests:
        raise ValueError("no requests to send")
    if rate <= 0:
        raise ValueError("rate must be positive")
    await warm_up(client, requests, bounds.warmup_requests, 8)
    rng = random.Random(seed)
    samples: list[_Sample] = []
    inflight: set[asyncio.Task[None]] = set()

    async def one(request: BenchRequest, scheduled: float) -> None:
        outcome = await _send(client, request, bounds.request_timeout_s)
        samples.append(
            _Sample(time.perf_counter() - scheduled, outcome, request.items, request.tokens, request.flops)
        )

    cpu_started = time.process_time()
    started = time.perf_counter()
    scheduled = started
    for index in range(bounds.max_requests):
        if scheduled - started >= bounds.max_duration_s:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = requests[index % len(requests)]
        if len(inflight) >= max_inflight:
            samples.append(_Sample(0.0, OVERFLOW, request.items, request.tokens, request.flops))
        else:
            task = asyncio.create_task(one(request, scheduled))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        scheduled += rng.expovariate(rate)
    if inflight:
        await asyncio.gather(*inflight)
    duration = time.perf_counter() - started
    return _summarise(
        samples,
        target=target,
        workload=workload,
        mode="open",
        concurrency=None,
        rate=rate,
        duration_s=duration,
        cpu_s=time.process_time() - cpu_started,
    )
