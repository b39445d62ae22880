"""Session-wide fixtures: tiny checkpoints, built once per test session."""

from __future__ import annotations

from pathlib import Path

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
