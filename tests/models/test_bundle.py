"""Loading bundles: corruption gives one clear ``BundleError`` naming the file; loading and
running a bundle needs neither torch nor transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from distilserve.models import BundleError, load_model
from distilserve.models.bundle import FORMAT_VERSION, MANIFEST_NAME, MODEL_NAME, TOKENIZER_NAME, read_manifest
from tests.conftest import REPO_ROOT
from tests.tiny_models import Arch, TinyTask

Bundles = dict[tuple[Arch, TinyTask], Path]


@pytest.fixture
def bundle(tiny_bundles: Bundles, tmp_path: Path) -> Path:
    """A private copy of a tiny bundle, free to damage."""
    return Path(shutil.copytree(tiny_bundles[("bert", "text-classification")], tmp_path / "bundle"))


def flip_one_byte(bundle: Path) -> None:
    path = bundle / MODEL_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def remove_tokenizer(bundle: Path) -> None:
    (bundle / TOKENIZER_NAME).unlink()


def future_format(bundle: Path) -> None:
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps(manifest | {"format_version": FORMAT_VERSION + 1}))


def truncate_manifest(bundle: Path) -> None:
    path = bundle / MANIFEST_NAME
    path.write_text(path.read_text()[:100])


def remove_manifest_field(bundle: Path) -> None:
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    del manifest["max_length"]
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "file_name", "problem"),
    [
        (flip_one_byte, MODEL_NAME, "sha256 does not match"),
        (remove_tokenizer, TOKENIZER_NAME, "missing"),
        (future_format, MANIFEST_NAME, f"unsupported bundle format version {FORMAT_VERSION + 1}"),
        (truncate_manifest, MANIFEST_NAME, "not valid JSON"),
        (remove_manifest_field, MANIFEST_NAME, "invalid manifest field 'max_length'"),
    ],
)
def test_damaged_bundle_gives_one_clear_error(
    bundle: Path, damage: Callable[[Path], None], file_name: str, problem: str
) -> None:
    load_model(bundle)  # intact, it loads
    damage(bundle)
    with pytest.raises(BundleError) as caught:
        load_model(bundle)
    error = caught.value
    assert error.path == bundle / file_name
    assert problem in error.problem
    assert str(error).startswith(f"{bundle / file_name}: ")


def list_a_file_outside(bundle: Path) -> None:
    outside = bundle.parent / "outside.onnx"
    shutil.copy(bundle / MODEL_NAME, outside)
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"]["../outside.onnx"] = manifest["files"][MODEL_NAME]
    path.write_text(json.dumps(manifest))


def link_the_model_outside(bundle: Path) -> None:
    # The link's target is the very same bytes, so the hash matches: only the place is wrong.
    outside = bundle.parent / "outside.onnx"
    (bundle / MODEL_NAME).rename(outside)
    (bundle / MODEL_NAME).symlink_to(outside)


@pytest.mark.parametrize(
    ("damage", "file_name"), [(list_a_file_outside, "../outside.onnx"), (link_the_model_outside, MODEL_NAME)]
)
def test_a_bundle_cannot_reach_outside_its_folder(
    bundle: Path, damage: Callable[[Path], None], file_name: str
) -> None:
    damage(bundle)
    for load in (load_model, read_manifest):
        with pytest.raises(BundleError, match="outside the bundle") as caught:
            load(bundle)
        assert caught.value.path == bundle / file_name


def test_a_link_inside_the_bundle_is_fine(bundle: Path) -> None:
    (bundle / "weights.onnx").write_bytes((bundle / MODEL_NAME).read_bytes())
    (bundle / MODEL_NAME).unlink()
    (bundle / MODEL_NAME).symlink_to("weights.onnx")
    load_model(bundle)


def test_missing_bundle_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_loading_and_running_a_bundle_imports_no_torch(tiny_bundles: Bundles) -> None:
    script = f"""
import sys
import distilserve.models, models.export, models.export.cli
from distilserve.models import load_model
for key, folder in {{"classify": {str(tiny_bundles[("distilbert", "text-classification")])!r},
                    "embed": {str(tiny_bundles[("bert", "feature-extraction")])!r}}}.items():
    result = load_model(folder).predict(["a short sentence", "and a longer one with more words in it"])
    assert len(result) == 2, result
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers", "optimum"))
print("heavy:", heavy)
sys.exit(1 if heavy else 0)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy: []" in result.stdout


def test_a_bundle_folder_is_readable_by_other_users(tmp_path: Path) -> None:
    """mkdtemp's private 0700 must not leak into bundles (a container runs them as another user)."""
    from distilserve.models.bundle import atomic_bundle_dir

    with atomic_bundle_dir(tmp_path / "bundle") as staging:
        (staging / "file").write_text("x")
    mode = (tmp_path / "bundle").stat().st_mode & 0o777
    assert mode == 0o777 & ~_current_umask()


def _current_umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask
