"""The memory soak without Docker (issue 25): ``distilserve serve`` with the default models, under
mixed traffic (long QA contexts, 64-text embedding requests, classification, bursts), its RSS
recorded by ``scripts/memory_soak.py``; no 5xx, RSS within bounds and not rising. The docker
suite runs the same script against the image under the deployment's 1 GiB limit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "memory_soak.py"
REQUESTS = 1500
# The budget the server is given (as a 700 MiB cgroup limit would): its peak RSS must stay under
# it. Issue 25's goal for RSS between bursts is 600 MB (main grew past 1.2 GB within 400 such
# requests, and kept it).
BUDGET_MB = 700
MAX_RSS_MB = 600


def soak_script() -> Any:
    spec = importlib.util.spec_from_file_location("memory_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("memory_soak", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        # The docker soak's curve (MB) with batch memory kept while busy and released when idle:
        # it swings between two levels, and its last quarter's median is 100 MB above the second's.
        (
            [
                390,
                420,
                427,
                352,
                449,
                335,
                322,
                322,
                407,
                357,
                322,
                344,
                365,
                456,
                352,
                323,
                439,
                447,
                323,
                437,
            ],
            False,
        ),
        ([300, 320, 330, 330, 335, 330, 340, 345, 350, 360, 380, 400, 420, 440, 460, 480], True),  # a leak
        ([300, 500, 310, 510, 305, 505, 312, 508, 306, 509, 311, 507], False),  # swings, same floor
        ([300, 310, 320], False),  # too few samples to say
    ],
)
def test_rising_means_the_floor_rises_not_the_swings(curve: list[float], expected: bool) -> None:
    assert soak_script().rising(curve, rise_mb=50.0) is expected


@pytest.mark.slow
def test_rss_stays_bounded_and_flat_under_mixed_traffic(tmp_path: Path) -> None:
    summary_path = tmp_path / "soak.json"
    # The default embedding bundle is built first, in its own process, as the image does at build
    # time: built at start-up it would leave the export's torch in the server's memory.
    built = subprocess.run(
        [sys.executable, "-m", "distilserve", "build-default", f"--cache-dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    soak = subprocess.run(
        [sys.executable, str(SCRIPT), "--serve", f"--serve-arg=--cache-dir={tmp_path / 'cache'}",
         f"--serve-arg=--memory-budget-mb={BUDGET_MB}", "--serve-arg=--log-level=warning",
         "--requests", str(REQUESTS), "--max-seconds", "900",
         "--samples", "12", "--burst-every", "500", "--max-rss-mb", str(MAX_RSS_MB),
         "--json", str(summary_path)],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    print(soak.stdout[-4000:])
    summary = json.loads(summary_path.read_text())
    assert summary["server_exited"] is None, soak.stderr[-3000:]
    # 504 (a burst outlasting a deadline on a slow CPU) is a matter of speed, not memory: see the script.
    assert all(int(status) < 500 or int(status) == 504 for status in summary["statuses"]), summary
    assert summary["statuses"].get("200", 0) > 0, summary
    assert not summary["connection_errors"], summary["connection_errors"]
    assert summary["max_rss_mb"] <= MAX_RSS_MB, summary["curve"]
    assert summary["peak_rss_mb"] <= BUDGET_MB, summary  # both in MiB
    assert not summary["rss_rising"], summary["curve"]
    assert soak.returncode == 0, soak.stdout[-3000:]
