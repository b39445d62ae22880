"""``distilserve bench --overload``: what the server still does well past its capacity.

Three runs of one workload against one server, one after the other:

1. **capacity**: a closed loop at ``--overload-capacity-concurrency`` (32): the 200s per second
   the server sustains;
2. **flood**: a closed loop at ``--overload-concurrency`` (1024) clients that send again at
   once, whatever the answer (no back-off);
3. **open**: Poisson arrivals at ``--overload-factor`` (5) times the measured capacity.

Beside runs 2 and 3 a prober opens a fresh connection every ``--probe-interval-s``, as a kubelet
does, and asks ``/health/live``; an answer later than ``PROBE_TIMEOUT_S`` is a failure.

Each run's ``extra`` holds ``capacity_rps``, ``goodput_share`` (its 200s per second over the
capacity), the 429s' latency (``refused_p50_ms``, ``refused_p99_ms``, from the load generator),
and the probes' ``live_probes``, ``live_failures``, ``live_p99_ms`` and ``live_max_ms``; the
slowest 200 is ``latency_ms.max``. The figures mean something only on a quiet machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from distilserve.bench.client import HttpClient, require_loopback
from distilserve.bench.loadgen import BenchRequest, Bounds, RunResult, closed_loop, latency_summary, open_loop

PROBE_TIMEOUT_S = 1.0
LIVE_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: distilserve\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class OverloadPlan:
    capacity_concurrency: int = 32
    flood_concurrency: int = 1024
    factor: float = 5.0
    probe_interval_s: float = 0.25


@dataclass
class ProbeLog:
    latencies_s: list[float] = field(default_factory=list)
    failures: int = 0


async def _probe_once(host: str, port: int) -> bool:
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(LIVE_REQUEST)
        status_line = await reader.readline()
        return status_line.split(b" ")[1:2] == [b"200"]
    finally:
        if writer is not None:
            writer.close()


async def probe_liveness(url: str, stop: asyncio.Event, interval_s: float) -> ProbeLog:
    """Ask ``/health/live`` on a fresh connection every ``interval_s`` until ``stop`` is set."""
    host, port = require_loopback(url)
    log = ProbeLog()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            answered = await asyncio.wait_for(_probe_once(host, port), PROBE_TIMEOUT_S)
        except (OSError, TimeoutError):
            answered = False
        if answered:
            log.latencies_s.append(time.perf_counter() - started)
        else:
            log.failures += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
    return log


async def _probed(run: Awaitable[RunResult], url: str, interval_s: float) -> RunResult:
    stop = asyncio.Event()
    prober = asyncio.ensure_future(probe_liveness(url, stop, interval_s))
    try:
        result = await run
    finally:
        stop.set()
        log = await prober
    live = latency_summary(log.latencies_s)
    result.extra.update(
        live_probes=float(len(log.latencies_s) + log.failures),
        live_failures=float(log.failures),
        live_p99_ms=live["p99"],
        live_max_ms=live["max"],
    )
    return result


def _raise_descriptor_limit(needed: int) -> None:
    """The flood needs a socket per client: lift this process's soft limit toward its hard one.
    The server, started earlier, keeps the limit it was started with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 256  # the prober, the interpreter's own files
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def overload_runs(
    client: HttpClient,
    requests: Sequence[BenchRequest],
    url: str,
    plan: OverloadPlan,
    bounds: Bounds,
    *,
    target: str,
    workload: str,
) -> list[RunResult]:
    _raise_descriptor_limit(plan.flood_concurrency)
    capacity = await closed_loop(
        client, requests, plan.capacity_concurrency, bounds, target=f"{target} (capacity)", workload=workload
    )
    capacity_rps = capacity.requests_per_s
    flood = await _probed(
        closed_loop(
            client,
            requests,
            plan.flood_concurrency,
            bounds,
            target=f"{target} (flood, no back-off)",
            workload=workload,
        ),
        url,
        plan.probe_interval_s,
    )
    arrivals = await _probed(
        open_loop(
            client,
            requests,
            max(plan.factor * capacity_rps, 1.0),
            bounds,
            max_inflight=plan.flood_concurrency,
            target=f"{target} (open, {plan.factor:g}x capacity)",
            workload=workload,
        ),
        url,
        plan.probe_interval_s,
    )
    runs = [capacity, flood, arrivals]
    for run in runs:
        run.extra["capacity_rps"] = capacity_rps
        run.extra["goodput_share"] = run.requests_per_s / capacity_rps if capacity_rps else float("nan")
    return runs


def describe(run: RunResult) -> str:
    """One line of the report's notes for an overload run."""
    extra = run.extra
    line = (
        f"{run.target} {run.workload}: {run.requests_per_s:.0f} 200s/s "
        f"({100 * extra['goodput_share']:.0f}% of {extra['capacity_rps']:.0f}/s capacity), "
        f"slowest 200 {run.latency_ms['max']:.0f} ms, errors {run.errors or 0}"
    )
    if "refused_p99_ms" in extra:
        line += f", 429 p50 {extra['refused_p50_ms']:.1f} ms p99 {extra['refused_p99_ms']:.1f} ms"
    if "live_probes" in extra:
        line += (
            f", /health/live {extra['live_probes']:.0f} probes, {extra['live_failures']:.0f} failed, "
            f"p99 {extra['live_p99_ms']:.1f} ms max {extra['live_max_ms']:.1f} ms"
        )
    return line
