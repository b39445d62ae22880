"""The benchmark report: where and when it ran, every measured run, the ratios, and tables.

Everything goes into one JSON document (``BenchReport.to_json``); ``markdown`` renders the
tables BENCHMARKS.md shows from it, so a figure in the docs can always be traced back to the
report, and the report to its command, commit and machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distilserve.bench.baselines.ceiling import CeilingResult
from distilserve.bench.gemm_peak import GemmPeak
from distilserve.bench.loadgen import RunResult
from distilserve.models.export.isa import detect_isa

# The CPU features that decide which int8 kernels ONNX Runtime can use.
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
)
AMX_PREFIX = "amx"
DISTILSERVE = "distilserve"
PYTORCH = "pytorch"
IN_PROCESS = "in-process ORT (no HTTP)"
HTTP_SUFFIX = " (HTTP)"


def git_commit(repo: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    # Uncommitted changes to tracked files mean the commit alone does not reproduce the figures.
    return result.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    flags: list[str] = []
    model = platform.processor() or "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        cpuinfo = ""
    if match := re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE):
        model = match.group(1).strip()
    if match := re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE):
        present = set(match.group(1).split())
        flags = [flag for flag in INTERESTING_FLAGS if flag in present]
        flags += sorted(flag for flag in present if flag.startswith(AMX_PREFIX))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return {
        "cpu": model,
        "cores": cores,
        "flags": flags,
        # The int8 scheme this CPU wants (models.export.isa): a bundle made for another one is
        # slower or less accurate here, and the server warns about it at load.
        "isa": detect_isa(cpuinfo),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # pragma: no cover
        return []


def package_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for name in ("distilserve", "onnxruntime", "tokenizers", "fastapi", "uvicorn", "numpy", "torch", "httpx"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class SweepPoint:
    length: int
    target: str
    latency_ms: dict[str, float]


@dataclass
class BenchReport:
    meta: dict[str, Any]
    gemm_peak: GemmPeak | None = None
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    ceiling: list[CeilingResult] = field(default_factory=list)
    sweep: list[SweepPoint] = field(default_factory=list)
    sweep_skipped: list[int] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Target name of each distilserve server measured -> the extra `serve` flags it ran with.
    variants: dict[str, list[str]] = field(default_factory=dict)
    # Target name -> model -> its batching figures from the server's /info (calibrated or not).
    batching: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def start(cls, repo: Path, argv: list[str]) -> BenchReport:
        return cls(
            meta={
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "commit": git_commit(repo),
                "command": " ".join(["distilserve", "bench", *argv]),
                "machine": machine_info(),
                "load_average_start": load_average(),
                "versions": package_versions(),
                "executable": sys.executable,
            }
        )

    def finish(self) -> None:
        self.meta["load_average_end"] = load_average()
        self.ratios = compute_ratios(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=True) + "\n"

    # Lookups ---------------------------------------------------------------------------------

    def closed_run(self, target: str, workload: str, concurrency: int) -> RunResult | None:
        for run in self.runs:
            if (
                run.target == target
                and run.workload == workload
                and run.mode == "closed"
                and run.concurrency == concurrency
            ):
                return run
        return None

    def best_closed(self, target: str, workload: str) -> RunResult | None:
        runs = [r for r in self.runs if r.target == target and r.workload == workload and r.mode == "closed"]
        return max(runs, key=lambda run: run.items_per_s, default=None)

    def ceiling_for(self, workload: str) -> CeilingResult | None:
        return next((result for result in self.ceiling if result.workload == workload), None)

    def targets(self, workload: str) -> list[str]:
        seen: dict[str, None] = {}
        for run in self.runs:
            if run.workload == workload:
                seen.setdefault(run.target, None)
        return list(seen)


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or denominator == 0:
        return math.nan
    return numerator / denominator


def _items(run: RunResult | None) -> float | None:
    return None if run is None else run.items_per_s


def compute_ratios(report: BenchReport, at: int = 32) -> dict[str, float]:
    """The figures the targets are stated in, keyed ``<workload>.<what>``."""
    ratios: dict[str, float] = {}
    other_variants = [label for label in report.variants if label != DISTILSERVE]
    for workload in report.workloads:
        for label in other_variants:
            # The same figures for each server variant, suffixed with its name.
            variant_ceiling = report.ceiling_for(workload)
            if variant_ceiling is not None:
                ratios[f"{workload}.c{at}_vs_ceiling.{label}"] = _ratio(
                    _items(report.closed_run(label, workload, at)), variant_ceiling.items_per_s
                )
                ratios[f"{workload}.best_vs_ceiling.{label}"] = _ratio(
                    _items(report.best_closed(label, workload)), variant_ceiling.items_per_s
                )
            variant_single = report.closed_run(label, workload, 1)
            if variant_single is not None:
                ratios[f"{workload}.c1_p50_ms.{label}"] = variant_single.latency_ms["p50"]
        served = report.closed_run(DISTILSERVE, workload, at)
        best = report.best_closed(DISTILSERVE, workload)
        ceiling = report.ceiling_for(workload)
        if ceiling is not None:
            ratios[f"{workload}.c{at}_vs_ceiling"] = _ratio(_items(served), ceiling.items_per_s)
            ratios[f"{workload}.best_vs_ceiling"] = _ratio(_items(best), ceiling.items_per_s)
        for target in report.targets(workload):
            if target.startswith(DISTILSERVE):
                # Variants are above; the same server with another client is a measure of the
                # client, not a baseline.
                other_client = report.closed_run(target, workload, at)
                if other_client is not None and served is not None and target.endswith(" client)"):
                    ratios[f"{workload}.c{at}_client_cpu_ms_per_request.{target}"] = (
                        other_client.client_cpu_ms_per_request
                    )
                    ratios[f"{workload}.c{at}_client_cpu_ms_per_request.{DISTILSERVE}"] = (
                        served.client_cpu_ms_per_request
                    )
                continue
            other = report.closed_run(target, workload, at)
            other_best = report.best_closed(target, workload)
            ratios[f"{workload}.c{at}_vs_{target}"] = _ratio(_items(served), _items(other))
            ratios[f"{workload}.best_vs_{target}_best"] = _ratio(_items(best), _items(other_best))
        single = report.closed_run(DISTILSERVE, workload, 1)
        if single is not None:
            ratios[f"{workload}.c1_p50_ms"] = single.latency_ms["p50"]
        if report.gemm_peak is not None:
            peak = report.gemm_peak.int8_gops
            if served is not None and served.useful_gops:
                ratios[f"{workload}.c{at}_useful_gops_share_of_peak"] = served.useful_gops / peak
            if ceiling is not None and report.workloads[workload].get("flops_per_item"):
                useful = ceiling.items_per_s * report.workloads[workload]["flops_per_item"] / 1e9
                ratios[f"{workload}.ceiling_useful_gops_share_of_peak"] = useful / peak
    ratios.update(http_overhead(report))
    return ratios


def http_overhead(report: BenchReport) -> dict[str, float]:
    """Goal 3: the c=1 p50 over HTTP minus the in-process batch-1 p50 of the same sentence, per
    sweep length and distilserve variant (``sweep.<length>.http_minus_in_process_p50_ms[.variant]``)."""
    in_process = {
        point.length: point.latency_ms["p50"] for point in report.sweep if point.target == IN_PROCESS
    }
    figures: dict[str, float] = {}
    for point in report.sweep:
        label = point.target.removesuffix(HTTP_SUFFIX)
        if label == point.target or not label.startswith(DISTILSERVE) or point.length not in in_process:
            continue
        suffix = "" if label == DISTILSERVE else f".{label}"
        figures[f"sweep.{point.length}.http_minus_in_process_p50_ms{suffix}"] = (
            point.latency_ms["p50"] - in_process[point.length]
        )
    return figures


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def variants_table(report: BenchReport, at: int = 32) -> list[str]:
    """One row per distilserve variant and workload: throughput, its share of the ceiling, c=1 p50."""
    lines = [
        "### distilserve variants (one server each, same workloads)",
        "",
        f"| variant | extra flags | workload | c={at} items/s | c={at} / ceiling | best / ceiling "
        "| c=1 p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, flags in report.variants.items():
        for workload in report.workloads:
            served = report.closed_run(label, workload, at)
            best = report.best_closed(label, workload)
            single = report.closed_run(label, workload, 1)
            ceiling = report.ceiling_for(workload)
            ceiling_items = None if ceiling is None else ceiling.items_per_s
            lines.append(
                f"| {label} | `{' '.join(flags) or '-'}` | {workload} | {_fmt(_items(served))} "
                f"| {_fmt(_ratio(_items(served), ceiling_items), 3)} "
                f"| {_fmt(_ratio(_items(best), ceiling_items), 3)} "
                f"| {_fmt(None if single is None else single.latency_ms['p50'], 2)} |"
            )
    lines.append("")
    for label, models in report.batching.items():
        for model, figures in models.items():
            lines.append(f"- {label}, model {model}: {describe_batching(figures)}")
    lines.append("")
    return lines


def describe_batching(figures: dict[str, Any]) -> str:
    if not figures.get("calibrated"):
        return (
            f"constant overhead {figures.get('overhead_tokens')} tokens, wait {figures.get('max_wait_ms')} ms"
        )
    return (
        f"calibrated: fixed {figures['fixed_cost_ms']:.3f} ms + {figures['token_cost_us']:.3f} us per padded "
        f"token, overhead {figures['overhead_tokens']} tokens, wait {figures['max_wait_ms']:.3f} ms"
    )


def markdown(report: BenchReport) -> str:
    """The report's tables, as BENCHMARKS.md shows them."""
    lines: list[str] = []
    meta = report.meta
    machine = meta["machine"]
    lines += [
        f"- date: {meta['date']}; commit: `{meta['commit']}`",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags'])}"
        f" (int8 scheme: {machine.get('isa', 'unknown')})",
        f"- load average at start/end: {meta['load_average_start']} / {meta.get('load_average_end')}",
        f"- command: `{meta['command']}`",
        "",
    ]
    if report.gemm_peak is not None:
        peak = report.gemm_peak
        lines += [
            f"int8 GEMM peak (MatMulInteger, {peak.threads} threads): **{peak.int8_gops:,.0f} GOPS**; "
            f"fp32 MatMul {peak.fp32_gflops:,.0f} GFLOPS.",
            "",
        ]
    for workload, info in report.workloads.items():
        lines += [
            f"### {workload}",
            "",
            f"{info['items']} items, {info['mean_tokens']:.1f} tokens per item on average; "
            f"bundle `{info['bundle']}`.",
            "",
            "| target | concurrency / rate | items/s | p50 ms | p90 ms | p99 ms | errors "
            "| client CPU ms/req |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ceiling = report.ceiling_for(workload)
        if ceiling is not None:
            lines.append(
                f"| ceiling (in-process ORT, batches of 32) | - | {_fmt(ceiling.items_per_s)} "
                "| - | - | - | - | - |"
            )
        for run in report.runs:
            if run.workload != workload:
                continue
            level = f"c={run.concurrency}" if run.mode == "closed" else f"open {run.rate:g}/s"
            errors = ", ".join(f"{key}: {count}" for key, count in run.errors.items()) or "0"
            latency = run.latency_ms
            lines.append(
                f"| {run.target} | {level} | {_fmt(run.items_per_s)} | {_fmt(latency['p50'], 2)} | "
                f"{_fmt(latency['p90'], 2)} | {_fmt(latency['p99'], 2)} | {errors} | "
                f"{_fmt(run.client_cpu_ms_per_request, 3)} |"
            )
        lines.append("")
    server_runs = [run for run in report.runs if run.extra.get("server_batches")]
    if server_runs:
        lines += [
            "### inside distilserve (from its /metrics, per run)",
            "",
            "| workload | concurrency | batches | rows per batch | padding share | inference busy "
            "| ms per batch | tokenize ms (wall) | queue wait ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for run in server_runs:
            extra = run.extra
            lines.append(
                f"| {run.workload} | {run.concurrency} | {extra['server_batches']:.0f} "
                f"| {extra['server_mean_batch_rows']:.1f} | {extra['server_mean_padding_share']:.2f} "
                f"| {extra['server_inference_busy_share']:.2f} | {extra['server_mean_batch_ms']:.1f} "
                f"| {extra['server_mean_tokenize_ms']:.2f} | {extra['server_mean_queue_wait_ms']:.2f} |"
            )
        lines.append("")
    if len(report.variants) > 1:
        lines += variants_table(report)
    if report.sweep:
        lengths = sorted({point.length for point in report.sweep})
        targets = list(dict.fromkeys(point.target for point in report.sweep))
        lines += [
            "### latency against sequence length (concurrency 1, p50 ms)",
            "",
            "| target | " + " | ".join(str(length) for length in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for target in targets:
            by_length = {
                point.length: point.latency_ms["p50"] for point in report.sweep if point.target == target
            }
            lines.append(f"| {target} | " + " | ".join(_fmt(by_length.get(n), 2) for n in lengths) + " |")
        if report.sweep_skipped:
            lines.append("")
            lines.append(f"Skipped (longer than the model's limit): {report.sweep_skipped}")
        lines.append("")
    if report.ratios:
        lines += ["### ratios", "", "| figure | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value, 3)} |" for key, value in report.ratios.items()]
        lines.append("")
    if report.notes:
        lines += ["### notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines)
