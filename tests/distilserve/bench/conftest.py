"""The bench's data: SST-2 and STS-B files in the shared layout, made of the tiny models' corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import corpus

SST2_LINES = ["sentence\tlabel"] + [f"{sentence}\t{index % 2}" for index, sentence in enumerate(corpus(40))]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """SST-2 and STS-B files in the shared layout, made of the tiny models' corpus."""
    (tmp_path / "sst2_dev.tsv").write_text("\n".join(SST2_LINES) + "\n", encoding="utf-8")
    (tmp_path / "stsbenchmark").mkdir()
    sentences = corpus(20, seed=1)
    rows = [
        f"main\tMSRvid\t2012test\t{index:04d}\t{index % 5}.0\t{a}\t{b}"
        for index, (a, b) in enumerate(zip(sentences[::2], sentences[1::2], strict=True))
    ]
    (tmp_path / "stsbenchmark" / "sts-dev.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path
