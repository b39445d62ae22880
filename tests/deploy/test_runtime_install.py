"""The Docker image's runtime stage, without Docker: ``pip install .`` (no extras) in a fresh
virtual environment, then ``distilserve serve`` from it on an int8 bundle.

It proves that serving needs neither torch nor transformers, and measures what the runtime
environment weighs (docs/deploying.md quotes the figure).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.processes import Process, free_port, http_get, http_post_json, serve_argv

pytestmark = pytest.mark.slow

# What the Dockerfile copies into the image to build the package.
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "distilserve", "models", "server")
# Export-only packages: none may be in the runtime environment.
EXPORT_ONLY = ("torch", "transformers", "optimum", "onnx")
# The runtime environment is about 250 MB; far more means an export dependency crept in.
MAX_RUNTIME_MB = 400
# Loads an int8 bundle as if on the other kind of CPU, so that its weights are refitted
# (models/engines/int8_weights.py): that reads and writes the graph with protobuf alone.
LOAD_REFITTED = """
import sys
from distilserve.models import load_manifest, load_model
bundle = sys.argv[1]
other_cpu = "avx2" if load_manifest(bundle).quantization.weight_type == "QInt8" else "avx512_vnni"
model = load_model(bundle, detect_cpu_isa=lambda: other_cpu, engine="onnxruntime")
assert model.selection.weights is not None, model.selection
(scores,) = model.predict(["A gripping, beautifully shot film."])
print(model.selection.weights, scores[0].label)
"""


def tree_bytes(root: Path) -> int:
    """Disk usage of a tree, as ``du`` counts it (allocated blocks, hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in root.rglob("*"):
        info = path.lstat()
        key = (info.st_dev, info.st_ino)
        if key in seen:
            continue
        seen.add(key)
        total += info.st_blocks * 512
    return total


def copy_package_sources(destination: Path) -> Path:
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGE_SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def test_runtime_install_serves_without_torch(
    classify_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = copy_package_sources(tmp_path / "src")
    venv = tmp_path / "runtime-venv"
    created = run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    # The same pip configuration (indexes, constraints) as every other install on this machine.
    installed = run([str(python), "-m", "pip", "install", "--quiet", str(source)])
    assert installed.returncode == 0, installed.stdout + installed.stderr

    listed = run([str(python), "-m", "pip", "list", "--format", "json"])
    packages = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "distilserve" in packages
    assert not packages & set(EXPORT_ONLY), f"export-only packages installed: {packages & set(EXPORT_ONLY)}"
    for module in EXPORT_ONLY:
        imported = run([str(python), "-c", f"import {module}"])
        assert imported.returncode != 0, f"`import {module}` works in the runtime environment"
        assert "ModuleNotFoundError" in imported.stderr
    refitted = run([str(python), "-c", LOAD_REFITTED, str(classify_bundle)])
    assert refitted.returncode == 0, refitted.stdout + refitted.stderr
    assert "refitted at load" in refitted.stdout

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = serve_argv([str(venv / "bin" / "distilserve")], [f"sentiment={classify_bundle}"], port)
    with Process(argv, tmp_path / "serve.log") as server:
        server.wait_until(f"{base}/health/ready", timeout_s=120)
        status, info = http_get(f"{base}/info")
        assert status == 200
        labels = set(json.loads(info)["models"][0]["labels"].values())
        status, answer = http_post_json(
            f"{base}/v1/classify", {"input": ["A gripping, beautifully shot film.", "Dull and far too long."]}
        )
        assert status == 200, answer
        assert answer["model"] == "sentiment"
        assert [item["index"] for item in answer["data"]] == [0, 1]
        assert all(item["label"] in labels and 0 <= item["score"] <= 1 for item in answer["data"])
        status, metrics = http_get(f"{base}/metrics")
        assert status == 200
        counted = b'distilserve_requests_total{model="sentiment",route="/v1/classify",status="200"} 1.0'
        assert counted in metrics
        # The server must not have pulled torch in behind our back.
        assert "torch" not in server.log_tail(100_000).lower()
        exit_code = server.stop()
    # A graceful stop: uvicorn drains, runs the lifespan's shutdown, then re-raises SIGTERM
    # (exit status 143 in a shell, -15 here), as a process stopped by a signal should.
    assert exit_code in (0, -signal.SIGTERM), server.log_tail()
    assert "Application shutdown complete" in server.log_tail()

    size_mb = tree_bytes(venv) / 2**20
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    largest = sorted(
        ((tree_bytes(path) / 2**20, path.name) for path in site_packages.iterdir() if path.is_dir()),
        reverse=True,
    )[:6]
    with capsys.disabled():
        print(
            f"\nruntime venv: {size_mb:.0f} MiB ({len(packages)} packages); largest: "
            + ", ".join(f"{name} {mb:.0f} MiB" for mb, name in largest)
        )
    assert size_mb < MAX_RUNTIME_MB
