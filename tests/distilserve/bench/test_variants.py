"""``--serve-variants``: one server per variant in one bench run, each with its ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from distilserve.bench.baselines.ceiling import CeilingResult
from distilserve.bench.cli import Settings, run, server_flags, variant_label
from distilserve.bench.loadgen import RunResult
from distilserve.bench.report import IN_PROCESS, BenchReport, SweepPoint, compute_ratios, markdown
from tests.server.conftest import BundleMap

CALIBRATED = "distilserve [calibrate-batching]"


def test_variants_are_flags_without_dashes() -> None:
    assert server_flags("baseline") == [] and server_flags("  ") == []
    assert server_flags("intra-op-threads=1  no-allow-spinning") == [
        "--intra-op-threads=1",
        "--no-allow-spinning",
    ]
    assert variant_label("baseline") == "distilserve"
    assert variant_label(" calibrate-batching ") == CALIBRATED
    with pytest.raises(ValueError, match="without dashes"):
        server_flags("--calibrate-batching")
    with pytest.raises(ValidationError, match="without dashes"):
        Settings(serve_variants=["--workers=2"])
    with pytest.raises(ValidationError, match="differ"):
        Settings(serve_variants=["baseline", ""])
    with pytest.raises(ValidationError, match="--url"):
        Settings(serve_variants=["baseline"], url="http://127.0.0.1:8080")


def closed(target: str, concurrency: int, items_per_s: float, p50_ms: float) -> RunResult:
    return RunResult(
        target=target,
        workload="sst2-classify",
        mode="closed",
        concurrency=concurrency,
        rate=None,
        sent=10,
        ok=10,
        errors={},
        duration_s=1.0,
        requests_per_s=items_per_s,
        items_per_s=items_per_s,
        tokens_per_s=0.0,
        useful_gops=0.0,
        latency_ms={"p50": p50_ms, "p90": p50_ms, "p99": p50_ms},
        client_cpu_s=0.0,
        client_cpu_ms_per_request=0.0,
    )


def test_each_variant_gets_its_ceiling_ratio_and_its_http_overhead(tmp_path: Path) -> None:
    report = BenchReport.start(tmp_path, [])
    report.workloads["sst2-classify"] = {"items": 10, "mean_tokens": 10.0, "bundle": "b", "flops_per_item": 0}
    report.variants = {"distilserve": [], CALIBRATED: ["--calibrate-batching"]}
    report.ceiling.append(CeilingResult("sst2-classify", 100, 1.0, 400.0, 0.0, 1))
    report.runs += [
        closed("distilserve", 1, 100.0, 5.0),
        closed("distilserve", 32, 200.0, 9.0),
        closed(CALIBRATED, 1, 110.0, 4.5),
        closed(CALIBRATED, 32, 360.0, 8.0),
    ]
    report.sweep += [
        SweepPoint(16, IN_PROCESS, {"p50": 1.25}),
        SweepPoint(16, "distilserve (HTTP)", {"p50": 2.0}),
        SweepPoint(16, f"{CALIBRATED} (HTTP)", {"p50": 1.5}),
        SweepPoint(16, "pytorch (HTTP)", {"p50": 30.0}),
    ]
    ratios = compute_ratios(report)
    assert ratios["sst2-classify.c32_vs_ceiling"] == 0.5
    assert ratios[f"sst2-classify.c32_vs_ceiling.{CALIBRATED}"] == 0.9
    assert ratios[f"sst2-classify.best_vs_ceiling.{CALIBRATED}"] == 0.9
    assert ratios[f"sst2-classify.c1_p50_ms.{CALIBRATED}"] == 4.5
    assert ratios["sweep.16.http_minus_in_process_p50_ms"] == 0.75
    assert ratios[f"sweep.16.http_minus_in_process_p50_ms.{CALIBRATED}"] == 0.25
    assert not any("pytorch" in key for key in ratios)
    assert not any("client_cpu" in key for key in ratios)  # a variant is not another client
    report.batching = {
        CALIBRATED: {
            "classify": {
                "calibrated": True,
                "overhead_tokens": 80,
                "max_wait_ms": 0.2,
                "fixed_cost_ms": 0.2,
                "token_cost_us": 2.5,
            }
        }
    }
    table = markdown(report)
    assert (
        f"- {CALIBRATED}, model classify: calibrated: fixed 0.200 ms + 2.500 us per padded token, "
        "overhead 80 tokens, wait 0.200 ms"
    ) in table
    assert "### distilserve variants" in table
    assert (
        f"| {CALIBRATED} | `--calibrate-batching` | sst2-classify | 360.0 | 0.900 | 0.900 | 4.50 |" in table
    )


@pytest.mark.slow
def test_one_bench_run_measures_every_variant(
    tiny_int8_bundles: BundleMap,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    output = tmp_path / "results.json"
    settings = Settings(
        classify_bundle=tiny_int8_bundles[("bert", "text-classification")],
        workloads=["classify", "sweep"],
        baselines=["ceiling"],
        serve_variants=["baseline", "calibrate-batching tokenize-inline-chars=512"],
        concurrency=[1, 4],
        requests=12,
        duration_s=20,
        warmup_requests=2,
        sweep_lengths=[8],
        sweep_requests=4,
        gemm_peak=False,
        compare_clients=False,
        data_dir=data_dir,
        work_dir=tmp_path / "work",
        output=output,
    )
    assert run(settings) == 0
    report = json.loads(output.read_text())
    label = "distilserve [calibrate-batching tokenize-inline-chars=512]"
    assert report["variants"] == {
        "distilserve": [],
        label: ["--calibrate-batching", "--tokenize-inline-chars=512"],
    }
    targets = {(run_result["target"], run_result["concurrency"]) for run_result in report["runs"]}
    for target in ("distilserve", label):
        assert {(target, 1), (target, 4)} <= targets
    for run_result in report["runs"]:
        assert run_result["errors"] == {} and run_result["ok"] == run_result["sent"]
    ratios = report["ratios"]
    for key in (
        "sst2-classify.best_vs_ceiling",
        f"sst2-classify.best_vs_ceiling.{label}",
        f"sst2-classify.c1_p50_ms.{label}",
        "sweep.8.http_minus_in_process_p50_ms",
        f"sweep.8.http_minus_in_process_p50_ms.{label}",
    ):
        assert key in ratios, key
    assert (tmp_path / "work" / "logs" / "distilserve-2.log").is_file()
    # What each server planned with, from its /info: the constant, then the calibrated cost.
    assert report["batching"]["distilserve"]["classify"]["calibrated"] is False
    calibrated = report["batching"][label]["classify"]
    assert calibrated["calibrated"] is True and calibrated["token_cost_us"] > 0
