"""``distilserve bench``: load-test distilserve and its baselines in one invocation.

    distilserve bench --classify-bundle model-zoo/sst2-minilm-l3-int8 \\
        --qa-bundle bundles/minilm-qa-untrained-int8 \\
        --embed-bundle ~/.cache/distilserve/bundles/all-minilm-l6-v2 \\
        --output .distilserve/bench/results.json --plot-dir docs

Phases run one after the other, so that only one thing uses the cores at a time:

1. distilserve: ``distilserve serve`` with every bundle, as a subprocess on a free loopback port
   (or the server at ``--url``), then every workload at every closed-loop concurrency and
   open-loop rate, then the length sweep at concurrency 1;
2. the ceiling: each bundle in this process through ``ModelRuntime.predict`` (no HTTP);
3. the plain PyTorch server (FastAPI around a transformers pipeline, fp32), per task;
4. infinity-emb with its optimum int8 engine, for the embedding workload.

The report (JSON) holds every run, the ratios the targets are stated in, the machine, the
commit and the command; ``--plot-dir`` also renders the two PNG plots.

The chat workload (``--workloads chat``, with all three bundles) times whole chatbot turns as
``examples/support_assistant`` makes them: classify and embed a message, then read 5 passages;
with ``--rerank-bundle`` too, rerank 20 retrieved passages before reading 3 of them, as the
assistant does by default.
The rerank workload (``--rerank-bundle``) sends a question and 20 passages per request; its
items are pairs, so served and ceiling rates are both pairs per second (no PyTorch baseline).

``--overload`` replaces all of that with the overload test of ``distilserve.bench.overload``
(capacity, a flood without back-off, an open loop past capacity, liveness probes) on the first
workload, distilserve only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from distilserve.bench.baselines import ceiling
from distilserve.bench.baselines.infinity import (
    InfinityGraph,
    InfinityUnavailableError,
    infinity_server,
    prepare_model,
)
from distilserve.bench.baselines.torch_server import torch_server
from distilserve.bench.client import ClientKind, HttpClient, make_client, require_loopback
from distilserve.bench.gemm_peak import EncoderFlops, measure_gemm_peak
from distilserve.bench.loadgen import (
    BenchRequest,
    Bounds,
    ChatTurn,
    RunResult,
    closed_loop,
    open_loop,
    warm_up,
)
from distilserve.bench.overload import OverloadPlan, describe, overload_runs
from distilserve.bench.proc import process_tree_cpu_s
from distilserve.bench.report import DISTILSERVE, IN_PROCESS, PYTORCH, BenchReport, SweepPoint, markdown
from distilserve.bench.server_metrics import scrape_batching, scrape_server_totals, server_side
from distilserve.bench.servers import ManagedServer, ServerStartError, distilserve_server
from distilserve.bench.workloads import (
    CHAT_PASSAGES,
    CHAT_PASSAGES_RERANKED,
    RERANK_DOCUMENTS,
    Api,
    ChatWorkload,
    Workload,
    chat_workload,
    classify_workload,
    embed_workload,
    qa_workload,
    rerank_workload,
    sweep_workloads,
)
from distilserve.bench.wrk import wrk_available, wrk_closed_loop
from distilserve.models.bundle import Task, read_manifest
from distilserve.models.errors import DistilserveError
from distilserve.models.evaluation.data import DataError, default_data_dir

logger = logging.getLogger(__name__)

T = TypeVar("T")
Kind = Literal["classify", "qa", "embed", "rerank"]
WorkloadChoice = Literal["classify", "qa", "embed", "rerank", "sweep", "chat"]
# "none" alone runs distilserve only (a list flag cannot be given empty).
Baseline = Literal["ceiling", "pytorch", "infinity", "none"]
# chat is asked for by name (--workloads chat): it needs all three bundles and times turns, not requests.
ALL_WORKLOADS: tuple[WorkloadChoice, ...] = ("classify", "qa", "embed", "rerank", "sweep")
ALL_BASELINES: tuple[Baseline, ...] = ("ceiling", "pytorch", "infinity")
ALL_INFINITY_GRAPHS: tuple[InfinityGraph, ...] = ("optimum", "distilserve")
KIND_TASKS: dict[Kind, Task] = {
    "classify": "text-classification",
    "qa": "question-answering",
    "embed": "feature-extraction",
    "rerank": "rerank",
}


class Settings(BaseSettings):
    """``distilserve bench [--classify-bundle DIR] [--qa-bundle DIR] [--embed-bundle DIR] ...``"""

    model_config = SettingsConfigDict(env_prefix="DISTILSERVE_BENCH_", extra="ignore")

    classify_bundle: Path | None = Field(None, description="classification bundle (SST-2 workload)")
    qa_bundle: Path | None = Field(None, description="question-answering bundle (SQuAD workload)")
    embed_bundle: Path | None = Field(None, description="embedding bundle (STS-B workload)")
    rerank_bundle: Path | None = Field(
        None, description="rerank bundle (SQuAD workload: a question and 20 passages per request)"
    )
    url: str | None = Field(
        None,
        description="load-test the distilserve server already running here (loopback only) instead of "
        "starting one; the bundles are still needed for tokens and the baselines",
    )
    workloads: list[WorkloadChoice] = Field(
        default_factory=lambda: list(ALL_WORKLOADS),
        description="workloads to run (those without a bundle are skipped); chat only when named",
    )
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(ALL_BASELINES),
        description="baselines to measure (none: only distilserve)",
    )
    concurrency: list[int] = Field(
        default_factory=lambda: [1, 8, 32, 128], description="closed-loop concurrency levels"
    )
    rates: list[float] = Field(
        default_factory=list, description="open-loop target rates, requests per second (Poisson arrivals)"
    )
    requests: int = Field(2000, ge=1, description="most requests per run (each level is one run)")
    duration_s: float = Field(15.0, gt=0, description="longest run, in seconds (whichever bound comes first)")
    warmup_requests: int = Field(64, ge=0, description="unrecorded requests before each run")
    qa_items: int = Field(1000, ge=1, description="SQuAD questions in the QA workload")
    rerank_items: int = Field(
        200, ge=1, description="SQuAD questions in the rerank workload (20 passages, one request each)"
    )
    chat_items: int = Field(
        500,
        ge=1,
        description="chat messages (SQuAD questions, each read against 5 passages) in the chat workload",
    )
    chat_retrieved: int = Field(
        RERANK_DOCUMENTS,
        ge=CHAT_PASSAGES_RERANKED,
        description=(
            "with --rerank-bundle, passages retrieved and reranked per chat turn before the best 3 are "
            "read (the support assistant's --retrieve-k)"
        ),
    )
    items_per_request: int = Field(
        1, ge=1, description="items (texts, QA pairs) per request; 1 is the online case the batcher is for"
    )
    sweep_lengths: list[int] = Field(
        default_factory=lambda: [8, 16, 64, 128, 256, 512],
        description="sequence lengths of the latency sweep, in tokens",
    )
    sweep_requests: int = Field(200, ge=1, description="requests per length of the sweep")
    classify_source: Path | None = Field(
        None, description="PyTorch checkpoint of the classifier; default: the bundle's source folder"
    )
    qa_source: Path | None = Field(None, description="PyTorch checkpoint of the QA model")
    embed_source: Path | None = Field(None, description="PyTorch checkpoint of the embedding model")
    rerank_source: Path | None = Field(None, description="PyTorch checkpoint of the cross-encoder")
    # Paths are relative to the working directory (the repository root, where `make` and the docs
    # run it), never to where this package is installed.
    repo: Path = Field(Path("."), description="the git checkout whose commit the report records")
    infinity_venv: Path = Field(
        Path(".bench-venvs/infinity"), description="virtual environment with infinity-emb"
    )
    infinity_graphs: list[InfinityGraph] = Field(
        default_factory=lambda: list(ALL_INFINITY_GRAPHS),
        description="int8 graphs infinity serves: optimum's quantization, or distilserve's own graph",
    )
    client: ClientKind = Field(
        default_factory=lambda: "wrk" if wrk_available() else "raw",
        description="load generator of the closed-loop levels: wrk (Debian's C client, the default where "
        "it is installed: it leaves the cores to the server), or the Python raw or httpx client",
    )
    compare_clients: bool = Field(
        True, description="also run the first workload at c=32 with the other client, to show its cost"
    )
    gemm_peak: bool = Field(True, description="measure the int8 GEMM peak (useful GOPS / peak)")
    overload: bool = Field(
        False,
        description=(
            "instead of the levels, measure overload on the first workload: capacity (closed loop at "
            "--overload-capacity-concurrency), a flood of --overload-concurrency clients without "
            "back-off, and an open loop at --overload-factor x capacity, with /health/live probed "
            "on fresh connections throughout"
        ),
    )
    overload_capacity_concurrency: int = Field(
        32, ge=1, description="closed-loop clients that measure capacity"
    )
    overload_concurrency: int = Field(1024, ge=1, description="clients of the flood (no back-off)")
    overload_factor: float = Field(5.0, gt=0, description="open-loop rate of the overload run, x capacity")
    probe_interval_s: float = Field(0.25, gt=0, description="seconds between /health/live probes")
    serve_args: list[str] = Field(
        default_factory=list, description="extra arguments for `distilserve serve` (e.g. --max-wait-ms=1)"
    )
    serve_variants: list[str] = Field(
        default_factory=list,
        description=(
            "measure distilserve once per variant, each a server of its own with these extra flags, "
            "written without their dashes and separated by spaces ('calibrate-batching', "
            "'intra-op-threads=1 no-allow-spinning'; 'baseline' for none); every variant gets the "
            "levels, the sweep and its ratios to the ceiling; the first is the one the other "
            "baselines are compared with"
        ),
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="folder of the data sets")
    work_dir: Path = Field(Path(".distilserve/bench"), description="server logs and prepared baseline models")
    output: Path = Field(Path(".distilserve/bench/results.json"), description="the JSON report")
    markdown_output: Path | None = Field(None, description="also write the tables as Markdown here")
    plot_dir: Path | None = Field(None, description="render the PNG plots into this folder")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["json", "text"] = Field("text", description="log format")

    @field_validator("url")
    @classmethod
    def _loopback_only(cls, value: str | None) -> str | None:
        if value is not None:
            require_loopback(value)
        return value.rstrip("/") if value else value

    @field_validator("serve_variants")
    @classmethod
    def _variants(cls, value: list[str]) -> list[str]:
        for variant in value:
            server_flags(variant)  # raises on a malformed one
        if len(set(map(variant_label, value))) != len(value):
            raise ValueError("serve variants must differ")
        return value

    @model_validator(mode="after")
    def _variants_need_own_servers(self) -> Settings:
        if self.url is not None and self.serve_variants:
            raise ValueError("--serve-variants starts its own servers; it cannot be used with --url")
        return self

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(level < 1 for level in value):
            raise ValueError("concurrency levels must be at least 1")
        return value

    def bundle_for(self, kind: Kind) -> Path | None:
        return {
            "classify": self.classify_bundle,
            "qa": self.qa_bundle,
            "embed": self.embed_bundle,
            "rerank": self.rerank_bundle,
        }[kind]

    def source_for(self, kind: Kind) -> Path | None:
        return {
            "classify": self.classify_source,
            "qa": self.qa_source,
            "embed": self.embed_source,
            "rerank": self.rerank_source,
        }[kind]

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.requests, self.duration_s, self.warmup_requests)


BASELINE_VARIANT = "baseline"


def server_flags(variant: str) -> list[str]:
    """``"calibrate-batching intra-op-threads=1"`` -> ``["--calibrate-batching", "--intra-op-threads=1"]``."""
    words = variant.split()
    if words == [BASELINE_VARIANT] or not words:
        return []
    for word in words:
        if word.startswith("-") or word == BASELINE_VARIANT:
            raise ValueError(f"serve variant {variant!r}: write flags without dashes (e.g. 'max-wait-ms=1')")
    return [f"--{word}" for word in words]


def variant_label(variant: str) -> str:
    """The report's target name of a server variant: ``distilserve`` or ``distilserve [flags]``."""
    flags = " ".join(variant.split())
    return DISTILSERVE if not flags or flags == BASELINE_VARIANT else f"{DISTILSERVE} [{flags}]"


@dataclass
class Planned:
    kind: Kind
    bundle: Path
    workload: Workload


def _run_async(coroutine: Awaitable[T]) -> T:
    """Run on uvloop when it is installed (it is, with uvicorn[standard]): a cheaper client loop."""

    async def wrapper() -> T:
        return await coroutine

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(wrapper())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrapper())


def checkpoint_for(bundle: Path, explicit: Path | None) -> Path | None:
    """The PyTorch checkpoint a bundle was exported from, when it is a folder on this machine."""
    if explicit is not None:
        return explicit
    source = read_manifest(bundle).source.id
    if Path(source).is_dir():
        return Path(source)
    from distilserve.models.export.default_model import DEFAULT_SOURCE_ID, minilm_source

    if source == DEFAULT_SOURCE_ID:
        with contextlib.suppress(DistilserveError):
            return minilm_source()[0]
    return None


def _flops(bundle: Path) -> EncoderFlops | None:
    try:
        return EncoderFlops.from_bundle(bundle)
    except ImportError:
        return None


def plan_workloads(settings: Settings, report: BenchReport) -> list[Planned]:
    builders = {
        "classify": classify_workload,
        "qa": qa_workload,
        "embed": embed_workload,
        "rerank": rerank_workload,
    }
    planned: list[Planned] = []
    for kind in ("classify", "qa", "embed", "rerank"):
        if kind not in settings.workloads:
            continue
        bundle = settings.bundle_for(kind)
        if bundle is None:
            report.notes.append(f"{kind}: no --{kind}-bundle given; workload skipped")
            continue
        task = read_manifest(bundle).task
        if task != KIND_TASKS[kind]:
            raise DataError(bundle, f"bundle serves {task}; the {kind} workload needs {KIND_TASKS[kind]}")
        limit = {"qa": settings.qa_items, "rerank": settings.rerank_items}.get(kind)
        workload = builders[kind](bundle, settings.data_dir, limit, _flops(bundle))
        report.workloads[workload.name] = {
            "kind": kind,
            "task": workload.task,
            "bundle": str(bundle),
            "items": len(workload),
            "mean_tokens": workload.mean_tokens,
            "flops_per_item": workload.total_flops / len(workload) if workload.flops else 0.0,
        }
        planned.append(Planned(kind, bundle, workload))
    return planned


def plan_chat(settings: Settings, report: BenchReport) -> ChatWorkload | None:
    """The chat workload: it needs all three bundles, served side by side as the example uses them."""
    if "chat" not in settings.workloads:
        return None
    kinds: tuple[Kind, ...] = ("classify", "embed", "qa")
    bundles = [settings.bundle_for(kind) for kind in kinds]
    missing = [kind for kind, bundle in zip(kinds, bundles, strict=True) if bundle is None]
    if missing:
        report.notes.append(f"chat: needs --{'-bundle, --'.join(missing)}-bundle; workload skipped")
        return None
    present = [bundle for bundle in bundles if bundle is not None]
    classify, embed, qa = present
    # With a reranker the turn is the assistant's: retrieve --chat-retrieved (20), rerank, read 3.
    rerank = settings.bundle_for("rerank")
    checked: list[tuple[Kind, Path]] = [*zip(kinds, present, strict=True)]
    if rerank is not None:
        checked.append(("rerank", rerank))
    for kind, bundle in checked:
        task = read_manifest(bundle).task
        if task != KIND_TASKS[kind]:
            raise DataError(bundle, f"bundle serves {task}; the chat workload needs {KIND_TASKS[kind]}")
    workload = chat_workload(
        classify,
        embed,
        qa,
        settings.data_dir,
        settings.chat_items,
        rerank_bundle=rerank,
        retrieved=settings.chat_retrieved,
    )
    stages = (
        f"rerank {settings.chat_retrieved} passages, then answer over the first {CHAT_PASSAGES_RERANKED}"
        if rerank
        else f"answer over {CHAT_PASSAGES} passages"
    )
    report.workloads[workload.name] = {
        "kind": "chat",
        "task": f"classify + embed, then {stages}",
        "bundle": ", ".join(str(bundle) for bundle in (classify, embed, *([rerank] if rerank else []), qa)),
        "items": len(workload),
        "mean_tokens": workload.mean_tokens,
        "flops_per_item": 0.0,
    }
    return workload


@dataclass(frozen=True)
class Sweep:
    """The latency sweep: fixed-length workloads on the first classification or embedding bundle."""

    kind: Kind
    bundle: Path
    workloads: list[Workload]


def plan_sweep(settings: Settings, report: BenchReport) -> Sweep | None:
    if "sweep" not in settings.workloads:
        return None
    for kind in ("classify", "embed"):
        bundle = settings.bundle_for(kind)
        if bundle is not None:
            workloads, skipped = sweep_workloads(
                bundle, settings.data_dir, settings.sweep_lengths, flops=_flops(bundle)
            )
            report.sweep_skipped = skipped
            return Sweep(kind, bundle, workloads)
    report.notes.append("sweep: needs a classification or embedding bundle; skipped")
    return None


@dataclass(frozen=True, slots=True)
class Load:
    """How a target's closed-loop levels are driven: from wrk when ``wrk_url`` is set (the Python
    ``client`` still warms up), else from the Python client; ``server_pid`` is the target's
    process, whose CPU time (and its workers') each run reports per answered request."""

    wrk_url: str | None = None
    server_pid: int | None = None

    def server_cpu_s(self) -> float | None:
        return None if self.server_pid is None else process_tree_cpu_s(self.server_pid)

    async def closed_loop(
        self,
        client: HttpClient,
        requests: Sequence[BenchRequest],
        concurrency: int,
        bounds: Bounds,
        *,
        target: str,
        workload: str,
    ) -> RunResult:
        if self.wrk_url is None or any(isinstance(request, ChatTurn) for request in requests):
            return await closed_loop(client, requests, concurrency, bounds, target=target, workload=workload)
        # wrk blocks until its run ends; a thread keeps this loop free (it has nothing else to do).
        return await asyncio.to_thread(
            wrk_closed_loop, self.wrk_url, requests, concurrency, bounds, target=target, workload=workload
        )

    @classmethod
    def of(cls, settings: Settings, url: str, server: ManagedServer | None) -> Load:
        pid = server.process.pid if server is not None and server.process is not None else None
        return cls(wrk_url=url if settings.client == "wrk" else None, server_pid=pid)


async def _levels(
    client: HttpClient,
    settings: Settings,
    workload: Workload,
    target: str,
    api: Api = "distilserve",
    model: str | None = None,
    concurrency: Sequence[int] | None = None,
    metrics_url: str | None = None,
    load: Load | None = None,
) -> list[RunResult]:
    requests = workload.requests(model, api, settings.items_per_request)
    load = load or Load()
    results = []
    for level in settings.concurrency if concurrency is None else concurrency:
        # Warm up first, so that the scrapes around the run see the measured requests only.
        await warm_up(client, requests, settings.warmup_requests, level)
        before = await scrape_server_totals(metrics_url)
        cpu_before = load.server_cpu_s()
        result = await load.closed_loop(
            client,
            requests,
            level,
            replace(settings.bounds, warmup_requests=0),
            target=target,
            workload=workload.name,
        )
        cpu_after = load.server_cpu_s()
        after = await scrape_server_totals(metrics_url)
        if before is not None and after is not None:
            result.extra.update(server_side(before, after, result.duration_s))
        if cpu_before is not None and cpu_after is not None:
            result.extra["server_cpu_s"] = cpu_after - cpu_before
            result.extra["server_cpu_ms_per_request"] = 1000.0 * (cpu_after - cpu_before) / max(result.ok, 1)
        logger.info(
            "%s %s c=%d: %.1f items/s, p50 %.2f ms, errors %s",
            target,
            workload.name,
            level,
            result.items_per_s,
            result.latency_ms["p50"],
            result.errors or 0,
        )
        results.append(result)
    for rate in settings.rates:
        result = await open_loop(
            client, requests, rate, settings.bounds, target=target, workload=workload.name
        )
        logger.info(
            "%s %s open %.0f/s: %.1f items/s, p99 %.2f ms",
            target,
            workload.name,
            rate,
            result.items_per_s,
            result.latency_ms["p99"],
        )
        results.append(result)
    return results


async def _sweep(
    client: HttpClient,
    settings: Settings,
    workloads: Sequence[Workload],
    target: str,
    load: Load | None = None,
) -> tuple[list[RunResult], list[SweepPoint]]:
    load = load or Load()
    bounds = Bounds(settings.sweep_requests, settings.duration_s, min(settings.warmup_requests, 16))
    runs: list[RunResult] = []
    points: list[SweepPoint] = []
    for workload in workloads:
        requests = workload.requests(None)
        await warm_up(client, requests, bounds.warmup_requests, 1)
        result = await load.closed_loop(
            client, requests, 1, replace(bounds, warmup_requests=0), target=target, workload=workload.name
        )
        runs.append(result)
        points.append(SweepPoint(workload.tokens[0], target, result.latency_ms))
    return runs, points


async def _overload(
    client: HttpClient,
    settings: Settings,
    report: BenchReport,
    planned: Sequence[Planned],
    url: str,
    target: str = DISTILSERVE,
) -> None:
    if not planned:
        report.notes.append("overload: not measured: no workload")
        return
    item = planned[0]
    plan = OverloadPlan(
        capacity_concurrency=settings.overload_capacity_concurrency,
        flood_concurrency=settings.overload_concurrency,
        factor=settings.overload_factor,
        probe_interval_s=settings.probe_interval_s,
    )
    runs = await overload_runs(
        client,
        item.workload.requests(None, "distilserve", settings.items_per_request),
        url,
        plan,
        settings.bounds,
        target=target,
        workload=item.workload.name,
    )
    for run_result in runs:
        logger.info("%s", describe(run_result))
        report.notes.append(f"overload: {describe(run_result)}")
    report.runs += runs


@contextlib.contextmanager
def _maybe_server(server: ManagedServer | None) -> Iterator[None]:
    if server is None:
        yield
        return
    with server:
        yield


def phase_distilserve(
    settings: Settings,
    report: BenchReport,
    planned: Sequence[Planned],
    sweep: Sweep | None,
    chat: ChatWorkload | None = None,
) -> None:
    """distilserve, once per ``--serve-variants`` entry (or once, as configured), one server at a time."""
    variants = settings.serve_variants or [BASELINE_VARIANT]
    for index, variant in enumerate(variants):
        label = variant_label(variant)
        report.variants[label] = [*settings.serve_args, *server_flags(variant)]
        _measure_distilserve(settings, report, planned, sweep, chat, variant, label, first=index == 0)


def _measure_distilserve(
    settings: Settings,
    report: BenchReport,
    planned: Sequence[Planned],
    sweep: Sweep | None,
    chat: ChatWorkload | None,
    variant: str,
    label: str,
    *,
    first: bool,
) -> None:
    server: ManagedServer | None = None
    url = settings.url
    if url is None:
        models: dict[str, Path] = {item.kind: item.bundle for item in planned}
        if sweep is not None:
            models.setdefault(sweep.kind, sweep.bundle)
        if chat is not None:
            for kind in KIND_TASKS:
                bundle = settings.bundle_for(kind)
                if bundle is not None:
                    models.setdefault(kind, bundle)
        log_name = "distilserve.log" if first else f"distilserve-{len(report.variants)}.log"
        server = distilserve_server(
            models,
            settings.work_dir / "logs",
            [*settings.serve_args, *server_flags(variant)],
            log_name=log_name,
        )
        url = server.url

    async def measure(target_url: str) -> None:
        if batching := await scrape_batching(target_url):
            report.batching[label] = batching
        client = make_client(settings.client, target_url)
        if settings.overload:
            try:
                await _overload(client, settings, report, planned, target_url, label)
            finally:
                await client.aclose()
            return
        load = Load.of(settings, target_url, server)
        try:
            for item in planned:
                report.runs += await _levels(
                    client, settings, item.workload, label, metrics_url=target_url, load=load
                )
            if sweep is not None:
                runs, points = await _sweep(client, settings, sweep.workloads, f"{label} (HTTP)", load)
                report.runs += runs
                report.sweep += points
            if chat is not None:
                report.runs += await _levels(client, settings, chat, label, metrics_url=target_url, load=load)
        finally:
            await client.aclose()
        if settings.compare_clients and planned and first:
            other: ClientKind = "raw" if settings.client != "raw" else "httpx"
            client = make_client(other, target_url)
            try:
                report.runs += await _levels(
                    client,
                    settings,
                    planned[0].workload,
                    f"{label} ({other} client)",
                    concurrency=[32],
                    load=replace(load, wrk_url=None),
                )
            finally:
                await client.aclose()

    with _maybe_server(server):
        _run_async(measure(url))


def phase_ceiling(
    settings: Settings,
    report: BenchReport,
    planned: Sequence[Planned],
    sweep: Sweep | None,
) -> None:
    for item in planned:
        result = ceiling.measure_throughput(
            item.bundle,
            item.workload.items,
            item.workload.tokens,
            workload=item.workload.name,
            max_items=settings.requests,
            max_duration_s=settings.duration_s,
        )
        logger.info("ceiling %s: %.1f items/s", item.workload.name, result.items_per_s)
        report.ceiling.append(result)
    if sweep is not None:
        for workload in sweep.workloads:
            latency = ceiling.measure_latency(
                sweep.bundle,
                workload.items,
                requests=settings.sweep_requests,
                max_duration_s=settings.duration_s,
            )
            report.sweep.append(SweepPoint(workload.tokens[0], IN_PROCESS, latency))


def phase_pytorch(
    settings: Settings,
    report: BenchReport,
    planned: Sequence[Planned],
    sweep: Sweep | None,
) -> None:
    kinds = {item.kind: item for item in planned}
    if sweep is not None and sweep.kind not in kinds:
        kinds[sweep.kind] = Planned(sweep.kind, sweep.bundle, sweep.workloads[0])
    for kind, item in kinds.items():
        if kind == "rerank":
            # The PyTorch baseline server speaks distilserve's classify, answer and embeddings routes.
            report.notes.append("pytorch rerank: the PyTorch baseline serves no rerank route; skipped")
            continue
        checkpoint = checkpoint_for(item.bundle, settings.source_for(kind))
        if checkpoint is None:
            report.notes.append(f"pytorch {kind}: no checkpoint folder (pass --{kind}-source); skipped")
            continue
        server = torch_server(checkpoint, KIND_TASKS[kind], settings.work_dir / "logs")

        async def measure(
            url: str, current: Planned = item, current_kind: Kind = kind, managed: ManagedServer = server
        ) -> None:
            client = make_client(settings.client, url)
            load = Load.of(settings, url, managed)
            try:
                if any(entry.kind == current_kind for entry in planned):
                    report.runs += await _levels(client, settings, current.workload, PYTORCH, load=load)
                if sweep is not None and sweep.kind == current_kind:
                    runs, points = await _sweep(client, settings, sweep.workloads, f"{PYTORCH} (HTTP)", load)
                    report.runs += runs
                    report.sweep += points
            finally:
                await client.aclose()

        try:
            with server:
                _run_async(measure(server.url))
        except ServerStartError as exc:
            report.notes.append(f"pytorch {kind}: server did not start: {exc}")


def phase_infinity(settings: Settings, report: BenchReport, planned: Sequence[Planned]) -> None:
    embed = next((item for item in planned if item.kind == "embed"), None)
    if embed is None:
        return
    checkpoint = checkpoint_for(embed.bundle, settings.embed_source)
    if checkpoint is None:
        report.notes.append(
            "infinity: no checkpoint folder for the embedding model (--embed-source); skipped"
        )
        return
    for graph in settings.infinity_graphs:
        target = f"infinity ({graph} int8)"
        try:
            folder = prepare_model(
                graph, checkpoint, embed.bundle, settings.infinity_venv, settings.work_dir / "infinity-models"
            )
            server = infinity_server(
                folder,
                settings.infinity_venv,
                settings.work_dir / "logs",
                served_name="minilm",
                hf_home=settings.work_dir / "hf-home",
            )

            async def measure(url: str, name: str = target, managed: ManagedServer = server) -> None:
                client = make_client(settings.client, url)
                try:
                    report.runs += await _levels(
                        client,
                        settings,
                        embed.workload,
                        name,
                        "infinity",
                        "minilm",
                        load=Load.of(settings, url, managed),
                    )
                finally:
                    await client.aclose()

            with server:
                _run_async(measure(server.url))
        except (InfinityUnavailableError, ServerStartError) as exc:
            report.notes.append(f"{target}: not measured: {exc}")


def run(settings: Settings) -> int:
    # The command line when run as `distilserve bench ...`; a call from Python has none to record.
    arguments = sys.argv[2:] if sys.argv[1:2] == ["bench"] else ["(called from Python)"]
    report = BenchReport.start(settings.repo, arguments)
    try:
        planned = plan_workloads(settings, report)
        sweep = plan_sweep(settings, report)
        chat = plan_chat(settings, report)
    except (DataError, DistilserveError, ValueError) as exc:
        print(f"distilserve bench: {exc}", file=sys.stderr)
        return 2
    if not planned and sweep is None and chat is None:
        print("distilserve bench: nothing to run: give at least one bundle", file=sys.stderr)
        return 2
    if settings.gemm_peak:
        try:
            report.gemm_peak = measure_gemm_peak()
        except ImportError as exc:
            report.notes.append(f"GEMM peak not measured: {exc}")
    try:
        phase_distilserve(settings, report, planned, sweep, chat)
    except ServerStartError as exc:
        print(f"distilserve bench: {exc}", file=sys.stderr)
        return 1
    # The overload test measures distilserve alone: the baselines have no admission to compare.
    baselines = [] if settings.overload else settings.baselines
    if "ceiling" in baselines:
        phase_ceiling(settings, report, planned, sweep)
    if "pytorch" in baselines:
        phase_pytorch(settings, report, planned, sweep)
    if "infinity" in baselines:
        phase_infinity(settings, report, planned)
    report.finish()
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    settings.output.write_text(report.to_json(), encoding="utf-8")
    tables = markdown(report)
    print(tables)
    if settings.markdown_output is not None:
        settings.markdown_output.parent.mkdir(parents=True, exist_ok=True)
        settings.markdown_output.write_text(tables, encoding="utf-8")
    if settings.plot_dir is not None:
        from distilserve.bench.plot import render

        for path in render(report, settings.plot_dir):
            print(f"plot: {path}")
    print(f"report: {settings.output}")
    return 0
