"""The start-up topology (``distilserve.server.topology``): workers and threads per worker from
the settings, the cores (affinity, cgroup CPU quota) and the cgroup memory limit; and /info."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from distilserve.models.session import cgroup_cpu_quota, cpu_count
from distilserve.server.app import build_app
from distilserve.server.settings import ModelSpec
from distilserve.server.topology import (
    MEMORY_HEADROOM,
    plan_topology,
    resolve_topology,
    worker_bytes_estimate,
)
from tests.server.conftest import make_settings, running_app

MB = 2**20


def test_workers_0_is_one_single_threaded_worker_per_core() -> None:
    topology = plan_topology(
        requested_workers=0, requested_threads=0, cores=4, memory_limit_bytes=None, worker_bytes=300 * MB
    )
    assert (topology.workers, topology.intra_op_threads) == (4, 1)
    assert "one worker per core" in topology.reason


def test_memory_limit_caps_the_workers() -> None:
    limit = 1024 * MB
    topology = plan_topology(
        requested_workers=0, requested_threads=0, cores=8, memory_limit_bytes=limit, worker_bytes=300 * MB
    )
    assert topology.workers == int(limit * MEMORY_HEADROOM) // (300 * MB) == 2
    assert topology.intra_op_threads == 4  # the cores are shared out among the workers there are
    assert "memory limit" in topology.reason
    # Never fewer than one worker, however small the limit.
    tiny = plan_topology(
        requested_workers=0, requested_threads=0, cores=8, memory_limit_bytes=10 * MB, worker_bytes=300 * MB
    )
    assert (tiny.workers, tiny.intra_op_threads) == (1, 8)
    # A limit that holds them all changes nothing.
    roomy = plan_topology(
        requested_workers=0, requested_threads=0, cores=2, memory_limit_bytes=8192 * MB, worker_bytes=300 * MB
    )
    assert (roomy.workers, roomy.intra_op_threads) == (2, 1)


def test_explicit_settings_win() -> None:
    workers = plan_topology(
        requested_workers=3, requested_threads=0, cores=6, memory_limit_bytes=100 * MB, worker_bytes=300 * MB
    )
    assert (workers.workers, workers.intra_op_threads, workers.reason) == (3, 2, "--workers 3")
    threads = plan_topology(
        requested_workers=0, requested_threads=2, cores=5, memory_limit_bytes=None, worker_bytes=300 * MB
    )
    assert (threads.workers, threads.intra_op_threads) == (2, 2)
    both = plan_topology(
        requested_workers=1, requested_threads=4, cores=2, memory_limit_bytes=None, worker_bytes=300 * MB
    )
    assert (both.workers, both.intra_op_threads) == (1, 4)
    # One process, as by default: ONNX Runtime keeps its own thread choice.
    single = plan_topology(
        requested_workers=1, requested_threads=0, cores=2, memory_limit_bytes=None, worker_bytes=300 * MB
    )
    assert (single.workers, single.intra_op_threads) == (1, 0)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], expected: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == expected


def test_cpu_count_honours_the_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: still one thread
    assert cpu_count(tmp_path) == 1
    assert cpu_count(tmp_path / "absent") == cpu_count()


def test_worker_estimate_grows_with_the_models(model_args: list[str]) -> None:
    specs = [ModelSpec.parse(arg) for arg in model_args]
    one = worker_bytes_estimate(specs[:1])
    assert worker_bytes_estimate([]) < one < worker_bytes_estimate(specs)
    resolved = resolve_topology(make_settings(model_args, workers=0), specs)
    assert resolved.workers >= 1 and resolved.intra_op_threads >= 1
    assert resolve_topology(make_settings(model_args), specs).workers == 1  # the default: one process
    assert resolved.worker_bytes_estimate == worker_bytes_estimate(specs)


async def test_info_reports_the_topology(model_args: list[str]) -> None:
    settings = make_settings(model_args)
    topology = resolve_topology(settings, settings.model_specs)
    app = build_app(settings, settings.model_specs, topology=topology)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://distilserve.test") as client:
            info = (await client.get("/info")).json()
    assert info["topology"] == topology.describe()
    # An app built without a topology is one process, and says so.
    async with running_app(model_args) as (_, client):
        single = (await client.get("/info")).json()["topology"]
    assert single["workers"] == 1 and "one process" in single["reason"]
