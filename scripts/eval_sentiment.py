#!/usr/bin/env python3
"""Score a teacher, its distilled student and the student's int8 bundle on SST-2 dev.

Prints one table: dev accuracy, parameters, size and in-process throughput of each model,
all measured in the same run on the same sentences, so that the ratios are comparable:

* PyTorch fp32 checkpoints (teacher, student): the checkpoint's own fast tokenizer, rows
  sorted by length, batches of 32, ``torch.inference_mode``.
* distilserve bundles (int8 ONNX): ``models.load_model(bundle).predict(texts)``, the offline
  path of the server (its tokenizer, length-grouped batches of at most 32 rows).

Throughput is texts per second over all dev sentences, tokenization included, the median of
``--rounds`` passes; the models take turns within each round so that load from other
processes on a shared machine falls on all of them alike.

    .venv/bin/python scripts/eval_sentiment.py --teacher RUNS/teacher --student RUNS/student \\
        --bundle model-zoo/sst2-minilm-l3-int8 [--teacher-bundle bundles/sst2-teacher-int8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

BATCH_SIZE = 32


def default_dev_file() -> Path:
    return Path(os.environ.get("DISTILSERVE_DATA_DIR", REPO_ROOT.parent / "shared" / "data")) / "sst2_dev.tsv"


@dataclass
class Scored:
    name: str
    kind: str
    path: str
    parameters: int
    size_mb: float
    accuracy: float = 0.0
    predictions: list[int] = field(default_factory=list, repr=False)
    throughput: list[float] = field(default_factory=list)

    @property
    def texts_per_second(self) -> float:
        return statistics.median(self.throughput) if self.throughput else float("nan")


def folder_megabytes(folder: Path, suffixes: tuple[str, ...]) -> float:
    return sum(path.stat().st_size for path in folder.iterdir() if path.name.endswith(suffixes)) / 1e6


class TorchClassifier:
    """A Hugging Face checkpoint run the way a PyTorch server would: sorted batches, no grad."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.parameters = int(sum(parameter.numel() for parameter in self.model.parameters()))

    def predict(self, texts: list[str]) -> list[int]:
        import torch

        from models.distill.data import collate, encode, sorted_batches

        # One tokenizer pass, rows sorted by token count, each batch padded to its longest row:
        # what the bundle runtime does too, so that the two are timed alike.
        data = encode(self.tokenizer, texts, None, max_length=512)
        predictions = [0] * len(texts)
        with torch.inference_mode():
            for rows in sorted_batches(data.lengths, BATCH_SIZE):
                batch = collate(data, rows, self.tokenizer.pad_token_id, "cpu")
                labels = self.model(**batch).logits.argmax(-1).tolist()
                for row, label in zip(rows, labels, strict=True):
                    predictions[row] = int(label)
        return predictions


class BundleClassifier:
    def __init__(self, folder: Path) -> None:
        from models import load_model

        self.runtime = load_model(folder)
        self.parameters = int(self.runtime.manifest.num_parameters or 0)

    def predict(self, texts: list[str]) -> list[int]:
        return [scores[0].index for scores in self.runtime.predict(texts, max_batch_size=BATCH_SIZE)]


def read_dev(path: Path) -> tuple[list[str], list[int]]:
    from models.distill.data import read_examples

    examples = read_examples(path)
    assert examples.labels is not None, f"{path} has no labels"
    return examples.texts, [int(label) for label in examples.labels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned teacher checkpoint")
    parser.add_argument("--student", type=Path, required=True, help="distilled student checkpoint")
    parser.add_argument("--bundle", type=Path, required=True, help="the student's int8 bundle")
    parser.add_argument("--teacher-bundle", type=Path, help="the teacher's int8 bundle (optional)")
    parser.add_argument(
        "--extra-bundle",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another bundle to score beside them (e.g. another int8 scheme); repeatable",
    )
    parser.add_argument("--dev-file", type=Path, default=default_dev_file(), help="labelled dev TSV")
    parser.add_argument("--rounds", type=int, default=5, help="throughput passes per model (median)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    texts, labels = read_dev(args.dev_file)
    gold = np.asarray(labels)
    candidates: list[tuple[Scored, Callable[[list[str]], list[int]]]] = []
    for name, folder in (("teacher", args.teacher), ("student", args.student)):
        model = TorchClassifier(folder)
        scored = Scored(
            name,
            "PyTorch fp32",
            str(folder),
            model.parameters,
            folder_megabytes(folder, (".safetensors", ".bin")),
        )
        candidates.append((scored, model.predict))
    bundles = [("student int8", args.bundle)]
    if args.teacher_bundle:
        bundles.append(("teacher int8", args.teacher_bundle))
    for extra in args.extra_bundle:
        name, _, path = extra.partition("=")
        bundles.append((name, Path(path)))
    for name, folder in bundles:
        bundle = BundleClassifier(folder)
        scored = Scored(
            name,
            "ONNX int8 bundle",
            str(folder),
            bundle.parameters,
            folder_megabytes(folder, ("",)),
        )
        candidates.append((scored, bundle.predict))

    for scored, predict in candidates:
        scored.predictions = predict(texts)  # also the warm-up pass
        scored.accuracy = float(np.mean(np.asarray(scored.predictions) == gold))
    for _ in range(args.rounds):
        for scored, predict in candidates:
            started = time.perf_counter()
            predict(texts)
            scored.throughput.append(len(texts) / (time.perf_counter() - started))

    by_name = {scored.name: scored for scored, _ in candidates}
    teacher, student, int8 = by_name["teacher"], by_name["student"], by_name["student int8"]
    print(
        f"SST-2 dev: {len(texts)} sentences, batch {BATCH_SIZE} length-sorted, median of {args.rounds} passes"
    )
    print(f"torch threads {__import__('torch').get_num_threads()}, cores {len(os.sched_getaffinity(0))}")
    print()
    print("| model | runtime | dev accuracy | parameters | size (MB) | texts/s | speed vs teacher fp32 |")
    print("|---|---|---|---|---|---|---|")
    for scored, _ in candidates:
        print(
            f"| {scored.name} | {scored.kind} | {scored.accuracy * 100:.2f} | {scored.parameters / 1e6:.1f}M "
            f"| {scored.size_mb:.1f} | {scored.texts_per_second:.0f} "
            f"| {scored.texts_per_second / teacher.texts_per_second:.2f}x |"
        )
    print()
    agreement = float(np.mean(np.asarray(int8.predictions) == np.asarray(student.predictions)))
    summary = {
        "student_accuracy_retained": student.accuracy / teacher.accuracy,
        "int8_accuracy_retained": int8.accuracy / teacher.accuracy,
        "student_speedup_fp32": student.texts_per_second / teacher.texts_per_second,
        "int8_minus_fp32_points": (int8.accuracy - student.accuracy) * 100,
        "int8_fp32_label_agreement": agreement,
    }
    if "teacher int8" in by_name:
        summary["student_speedup_int8"] = int8.texts_per_second / by_name["teacher int8"].texts_per_second
    for key, value in summary.items():
        print(f"{key}: {value:.4f}")
    if args.json:
        payload = {
            "dev_file": str(args.dev_file),
            "sentences": len(texts),
            "models": [
                {k: v for k, v in asdict(scored).items() if k != "predictions"}
                | {"texts_per_second": scored.texts_per_second}
                for scored, _ in candidates
            ],
            "summary": summary,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
