"""PNG plots of a benchmark report (matplotlib, from the ``bench`` extra).

* ``latency_vs_length.png``: p50 latency of one request against its length in tokens, at
  concurrency 1, for every target of the sweep;
* ``throughput_vs_concurrency.png``: items per second against closed-loop concurrency, one
  panel per workload, with the in-process ceiling as a dashed line.
"""

from __future__ import annotations

import math
from pathlib import Path

from distilserve.bench.report import BenchReport


def render(report: BenchReport, folder: Path) -> list[Path]:
    """Write the plots into ``folder``; returns their paths (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no screen
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    subtitle = (
        f"{report.meta['machine']['cores']} cores, commit {report.meta['commit']}, {report.meta['date'][:10]}"
    )

    if report.sweep:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for target in dict.fromkeys(point.target for point in report.sweep):
            points = sorted((p.length, p.latency_ms["p50"]) for p in report.sweep if p.target == target)
            axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=target)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("sequence length (tokens)")
        axes.set_ylabel("p50 latency (ms), concurrency 1")
        axes.set_title(f"Latency against sequence length\n{subtitle}", fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = folder / "latency_vs_length.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    workloads = [name for name in report.workloads if any(r.workload == name for r in report.runs)]
    if workloads:
        columns = min(3, len(workloads))
        rows = math.ceil(len(workloads) / columns)
        figure, grid = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
        for index, workload in enumerate(workloads):
            axes = grid[index // columns][index % columns]
            for target in report.targets(workload):
                runs = sorted(
                    (r.concurrency, r.items_per_s)
                    for r in report.runs
                    if r.workload == workload and r.target == target and r.mode == "closed" and r.concurrency
                )
                axes.plot([c for c, _ in runs], [v for _, v in runs], marker="o", label=target)
            ceiling = report.ceiling_for(workload)
            if ceiling is not None:
                axes.axhline(ceiling.items_per_s, linestyle="--", color="gray", label="ceiling (in-process)")
            axes.set_xscale("log", base=2)
            axes.set_yscale("log")
            axes.set_xlabel("concurrent requests (closed loop)")
            axes.set_ylabel("items per second")
            axes.set_title(workload)
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(fontsize=8)
        for index in range(len(workloads), rows * columns):
            grid[index // columns][index % columns].set_visible(False)
        figure.suptitle(f"Throughput against concurrency — {subtitle}", fontsize=10)
        figure.tight_layout()
        path = folder / "throughput_vs_concurrency.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
