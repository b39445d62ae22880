"""Settings of the tiny training runs the distill tests make: fast, seeded, quiet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilserve.models.distill.cli import Settings


def tiny_settings(tmp_path: Path, teacher: Path, files: dict[str, Any], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "teacher": teacher,
        "train_file": files["train"],
        "dev_file": files["dev"],
        "output": tmp_path / "student",
        "epochs": 6,
        "batch_size": 16,
        "lr": 3e-3,
        "seed": 0,
        "progress": False,
        "cache_dir": tmp_path / "cache",
    }
    return Settings(**(values | overrides))
