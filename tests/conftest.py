"""Session-wide fixtures: tiny checkpoints and their exported bundles, built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from tests.tiny_models import Arch, TinyTask, build_checkpoint

ARCHS: tuple[Arch, ...] = ("distilbert", "bert")
TASKS: tuple[TinyTask, ...] = ("text-classification", "question-answering", "feature-extraction")

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``DISTILSERVE_DATA_DIR``, or ``../shared/data`` beside the repository."""
    import os

    return Path(os.environ.get("DISTILSERVE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[Arch, TinyTask], Path]:
    """Every (architecture, task) pair as a saved Hugging Face checkpoint folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        (arch, task): build_checkpoint(root / f"{arch}-{task}", arch, task, seed=index)
        for index, (arch, task) in enumerate((a, t) for a in ARCHS for t in TASKS)
    }


@pytest.fixture(scope="session")
def tiny_rerank_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[Arch, Path]:
    """A tiny, randomly initialised one-logit cross-encoder per architecture."""
    root = tmp_path_factory.mktemp("rerank-checkpoints")
    return {
        arch: build_checkpoint(root / arch, arch, "rerank", seed=20 + index)
        for index, arch in enumerate(ARCHS)
    }


@pytest.fixture(scope="session")
def tiny_rerank_bundles(
    tiny_rerank_checkpoints: dict[Arch, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[Arch, Literal["int8", "none"]], Path]:
    """Each tiny cross-encoder exported as an int8 bundle (the default) and as fp32."""
    from distilserve.models.export import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("rerank-bundles")
    bundles: dict[tuple[Arch, Literal["int8", "none"]], Path] = {}
    for arch, checkpoint in tiny_rerank_checkpoints.items():
        for quantize in ("int8", "none"):
            output = root / f"{arch}-{quantize}"
            export_bundle(
                ExportOptions(source=str(checkpoint), output=output, task="rerank", quantize=quantize)
            )
            bundles[(arch, quantize)] = output
    return bundles


BundleKey = tuple[Arch, TinyTask]
# Tasks whose int8 bundles the tests need (classification and embeddings: tiny random QA models
# have too flat span logits for int8 span agreement to be a meaningful fixture).
INT8_TASKS: tuple[TinyTask, ...] = ("text-classification", "feature-extraction")


def _export_all(
    checkpoints: dict[BundleKey, Path],
    root: Path,
    quantize: Literal["int8", "none"],
    tasks: tuple[TinyTask, ...],
) -> dict[BundleKey, Path]:
    from distilserve.models.export import ExportOptions, export_bundle

    bundles = {}
    for (arch, task), checkpoint in checkpoints.items():
        if task not in tasks:
            continue
        output = root / f"{arch}-{task}"
        export_bundle(ExportOptions(source=str(checkpoint), output=output, task=task, quantize=quantize))
        bundles[(arch, task)] = output
    return bundles


@pytest.fixture(scope="session")
def tiny_bundles(
    tiny_checkpoints: dict[BundleKey, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[BundleKey, Path]:
    """Every tiny checkpoint exported as an fp32 bundle (``--quantize none``): exact comparisons."""
    return _export_all(tiny_checkpoints, tmp_path_factory.mktemp("bundles-fp32"), "none", TASKS)


@pytest.fixture(scope="session")
def tiny_int8_bundles(
    tiny_checkpoints: dict[BundleKey, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[BundleKey, Path]:
    """The classification and embedding checkpoints exported as int8 bundles (the default export)."""
    return _export_all(tiny_checkpoints, tmp_path_factory.mktemp("bundles-int8"), "int8", INT8_TASKS)
