"""Readers for the evaluation sets in the shared data folder: SST-2, SQuAD v1.1, STS Benchmark.

The files are never copied into the repository; they are read where they lie, from
``DISTILSERVE_DATA_DIR`` or ``../shared/data`` beside the repository. numpy and the standard
library only: evaluating a bundle needs neither torch nor pandas.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Re-exported: callers import DataError from here (one class, defined in models.errors).
from distilserve.models.errors import DataError as DataError

DATA_DIR_ENV = "DISTILSERVE_DATA_DIR"
SST2_DEV = "sst2_dev.tsv"
SQUAD_DEV = "squad_v1.1_dev.json"
STSB_DEV = "stsbenchmark/sts-dev.csv"


def default_data_dir() -> Path:
    """``$DISTILSERVE_DATA_DIR``, else ``../shared/data`` beside the repository (or the cwd)."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    beside_repo = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    # An installed (non-editable) package lives in site-packages, where the first guess is
    # meaningless; a checkout's working directory is the next best place to look.
    return beside_repo if beside_repo.is_dir() else Path("../shared/data")


@dataclass(frozen=True, slots=True)
class LabelledTexts:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, slots=True)
class SquadExample:
    id: str
    question: str
    context: str
    answers: list[str]


@dataclass(frozen=True, slots=True)
class ScoredPairs:
    first: list[str]
    second: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, f"file not found (set {DATA_DIR_ENV} to the folder holding the data sets)")


def read_sst2(path: Path, limit: int | None = None) -> LabelledTexts:
    """GLUE SST-2 TSV: a ``sentence<TAB>label`` header, then one sentence per row (1 = positive).

    Fields are not quoted (``QUOTE_NONE``): the sentences contain bare ``"`` characters.
    ``limit`` keeps the first rows (the file mixes both labels throughout).
    """
    _require_file(path)
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or not {"sentence", "label"} <= set(reader.fieldnames):
            raise DataError(path, f"expected columns 'sentence' and 'label', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if limit is not None and len(texts) >= limit:
                break
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                raise DataError(path, f"line {line}: label {row['label']!r} is not an integer") from None
            texts.append(row["sentence"].strip())
            labels.append(label)
    return LabelledTexts(texts, labels)


def read_squad(path: Path, limit: int | None = None) -> list[SquadExample]:
    """SQuAD v1.1 in its official JSON: every question with its context and gold answer texts."""
    _require_file(path)
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise DataError(path, "expected the official SQuAD layout: {'data': [articles]}")
    examples: list[SquadExample] = []
    for article in raw["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                if limit is not None and len(examples) >= limit:
                    return examples
                answers = [answer["text"] for answer in qa["answers"]]
                examples.append(SquadExample(qa["id"], qa["question"], context, answers))
    return examples


def read_stsb(path: Path, limit: int | None = None) -> ScoredPairs:
    """STS Benchmark CSV (tab-separated, unquoted): genre, file, year, id, score, sentence1, sentence2.

    A few rows carry extra trailing fields (source notes); only the first seven are read.
    """
    _require_file(path)
    first: list[str] = []
    second: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if limit is not None and len(scores) >= limit:
                break
            if not row:
                continue
            if len(row) < 7:
                raise DataError(
                    path, f"line {line}: expected at least 7 tab-separated fields, got {len(row)}"
                )
            try:
                scores.append(float(row[4]))
            except ValueError:
                raise DataError(path, f"line {line}: score {row[4]!r} is not a number") from None
            first.append(row[5])
            second.append(row[6])
    return ScoredPairs(first, second, scores)
