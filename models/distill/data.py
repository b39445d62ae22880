"""Training data: TSV/JSON readers, tokenization, length-grouped batches, the teacher-logit cache.

Files hold one text and (optionally) one label per row:

* TSV with a header row, GLUE style (SST-2: ``sentence<TAB>label``). Fields are not quoted
  (``csv.QUOTE_NONE``): GLUE sentences contain bare ``"`` characters.
* JSON: an array of objects, or JSON Lines (one object per line), e.g. ``{"text": ..., "label": 1}``.

Labels may be integers (class ids) or strings (class names). A distillation set may have no
labels at all: with ``beta == 0`` the student learns from the teacher's logits alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from distilserve.models.batching import BatchLimits, plan_batches

# Re-exported: callers import DataError from here (one class, defined in models.errors).
from distilserve.models.errors import DataError as DataError

if TYPE_CHECKING:
    import torch

TEXT_COLUMNS = ("sentence", "text", "sentence1", "content", "review")
RawLabel = int | str


@dataclass(frozen=True)
class TextExamples:
    """Texts and their raw labels (None where the file has no label column)."""

    texts: list[str]
    labels: list[RawLabel] | None
    source: Path

    def __len__(self) -> int:
        return len(self.texts)

    def subsample(self, limit: int | None, seed: int) -> TextExamples:
        """A seeded random subset of ``limit`` rows, in file order (all rows when ``limit`` is None).

        Random rather than the first rows, so that a subset keeps the file's label balance
        whatever order the file is in.
        """
        if limit is None or limit >= len(self.texts):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.texts)), limit))
        labels = None if self.labels is None else [self.labels[index] for index in keep]
        return TextExamples([self.texts[index] for index in keep], labels, self.source)

    def split(self, held_out: int, seed: int) -> tuple[TextExamples, TextExamples]:
        """The rows minus a seeded random ``held_out`` of them, and those rows (both in file order)."""
        if not 0 < held_out < len(self.texts):
            raise DataError(self.source, f"cannot hold out {held_out} of {len(self.texts)} rows")
        chosen = set(random.Random(seed).sample(range(len(self.texts)), held_out))
        parts = ([i for i in range(len(self.texts)) if i not in chosen], sorted(chosen))
        rest, validation = (
            TextExamples(
                [self.texts[i] for i in rows],
                None if self.labels is None else [self.labels[i] for i in rows],
                self.source,
            )
            for rows in parts
        )
        return rest, validation


def _pick_text_column(path: Path, columns: Sequence[str], text_column: str | None) -> str:
    if text_column is not None:
        if text_column not in columns:
            raise DataError(path, f"no column {text_column!r} (columns: {list(columns)})")
        return text_column
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    raise DataError(path, f"no text column among {list(columns)}; name one with --text-column")


def _parse_label(path: Path, where: str, value: Any) -> RawLabel:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DataError(path, f"{where}: label {value!r} is neither an integer nor a string")
    if isinstance(value, str):
        text = value.strip()
        # TSV fields are always strings; "1" is class 1, "positive" is a class name.
        if text.lstrip("-").isdigit():
            return int(text)
        if not text:
            raise DataError(path, f"{where}: empty label")
        return text
    return int(value)


def _read_tsv(path: Path, text_column: str | None, label_column: str) -> TextExamples:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(path, "file is empty")
        header = [name.strip() for name in header]
        text_name = _pick_text_column(path, header, text_column)
        text_index = header.index(text_name)
        label_index = header.index(label_column) if label_column in header else None
        texts: list[str] = []
        labels: list[RawLabel] = []
        for line_number, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataError(path, f"line {line_number}: {len(row)} fields, the header has {len(header)}")
            texts.append(row[text_index].strip())
            if label_index is not None:
                labels.append(_parse_label(path, f"line {line_number}", row[label_index]))
    return TextExamples(texts, labels if label_index is not None else None, path)


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    content = path.read_text(encoding="utf-8")
    if content.lstrip().startswith("["):
        try:
            records = json.loads(content)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON ({exc})") from exc
        for index, record in enumerate(records):
            yield f"record {index}", record
        return
    for line_number, line in enumerate(content.splitlines(), start=1):
        if line.strip():
            try:
                yield f"line {line_number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {line_number}: invalid JSON ({exc})") from exc


def _read_json(path: Path, text_column: str | None, label_column: str) -> TextExamples:
    texts: list[str] = []
    labels: list[RawLabel] = []
    has_labels: bool | None = None
    text_name: str | None = None
    for where, record in _json_records(path):
        if not isinstance(record, dict):
            raise DataError(path, f"{where}: expected an object, got {type(record).__name__}")
        if text_name is None:
            text_name = _pick_text_column(path, list(record), text_column)
            has_labels = label_column in record
        text = record.get(text_name)
        if not isinstance(text, str):
            raise DataError(path, f"{where}: field {text_name!r} is missing or not a string")
        texts.append(text.strip())
        if has_labels:
            if label_column not in record:
                raise DataError(path, f"{where}: no {label_column!r} field (earlier records have one)")
            labels.append(_parse_label(path, where, record[label_column]))
    if not texts:
        raise DataError(path, "file holds no records")
    return TextExamples(texts, labels if has_labels else None, path)


def read_examples(
    path: Path | str, *, text_column: str | None = None, label_column: str = "label"
) -> TextExamples:
    """Read a TSV (``.tsv``/``.tab``) or JSON (``.json``/``.jsonl``) file of texts and labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    suffix = path.suffix.lower()
    if suffix in {".tsv", ".tab"}:
        examples = _read_tsv(path, text_column, label_column)
    elif suffix in {".json", ".jsonl"}:
        examples = _read_json(path, text_column, label_column)
    else:
        raise DataError(path, "unknown format: use a .tsv or a .json/.jsonl file")
    if not examples.texts:
        raise DataError(path, "file holds no rows")
    empty = next((index for index, text in enumerate(examples.texts) if not text), None)
    if empty is not None:
        raise DataError(path, f"row {empty + 1} has an empty text")
    return examples


def label_ids(examples: TextExamples, label2id: dict[str, int], num_labels: int) -> list[int] | None:
    """Class ids of the raw labels: integers must be in range, strings must be known names."""
    if examples.labels is None:
        return None
    ids: list[int] = []
    for row, label in enumerate(examples.labels, start=1):
        if isinstance(label, int):
            if not 0 <= label < num_labels:
                raise DataError(examples.source, f"row {row}: label {label} is outside 0..{num_labels - 1}")
            ids.append(label)
        elif label in label2id:
            ids.append(label2id[label])
        else:
            raise DataError(
                examples.source, f"row {row}: unknown label {label!r} (known: {sorted(label2id)})"
            )
    return ids


def infer_label_names(examples: TextExamples) -> list[str]:
    """Class names when nothing else gives them: sorted names, or LABEL_i for integer labels."""
    if not examples.labels:
        raise DataError(examples.source, "the file has no labels, so the classes are unknown; pass --labels")
    if all(isinstance(label, int) for label in examples.labels):
        return [f"LABEL_{index}" for index in range(max(int(label) for label in examples.labels) + 1)]
    if any(isinstance(label, int) for label in examples.labels):
        raise DataError(examples.source, "labels mix class ids and class names")
    return sorted({str(label) for label in examples.labels})


@dataclass
class EncodedSet:
    """Tokenized texts (unpadded, special tokens included) and their class ids."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int] | None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def target_columns(self) -> dict[str, list[int]]:
        """The training targets, by the name the model's forward takes them under."""
        return {} if self.labels is None else {"labels": self.labels}

    def collate(self, indices: Sequence[int], pad_token_id: int, device: Any) -> dict[str, torch.Tensor]:
        """The model inputs of the rows ``indices``, one sequence per row."""
        return collate(self, indices, pad_token_id, device)


class TrainingRows(Protocol):
    """What the training loop draws batches from: rows with a length each, made into model inputs.

    A row is one sequence (``EncodedSet``) or a list of sequences trained together (a rerank
    list: a question with its positive and negative passages, ``rerank.RerankLists``).
    """

    def __len__(self) -> int: ...

    @property
    def lengths(self) -> list[int]: ...

    def collate(self, indices: Sequence[int], pad_token_id: int, device: Any) -> dict[str, torch.Tensor]: ...


def encode(tokenizer: Any, texts: Sequence[str], labels: list[int] | None, max_length: int) -> EncodedSet:
    """Tokenize with the checkpoint's own tokenizer, truncated to ``max_length``, unpadded."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    type_ids = encoded.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return EncodedSet(input_ids=encoded["input_ids"], token_type_ids=type_ids, labels=labels)


def concatenate(first: EncodedSet, second: EncodedSet) -> EncodedSet:
    """Rows of ``first`` then ``second``; labels where ``first`` has them (``second``'s missing ones
    are placeholders, 0, for the caller to fill)."""
    if (first.token_type_ids is None) != (second.token_type_ids is None):
        raise ValueError("cannot join encodings with and without token type ids")
    type_ids = None
    if first.token_type_ids is not None and second.token_type_ids is not None:
        type_ids = first.token_type_ids + second.token_type_ids
    labels = None
    if first.labels is not None:
        labels = first.labels + (second.labels if second.labels is not None else [0] * len(second))
    return EncodedSet(input_ids=first.input_ids + second.input_ids, token_type_ids=type_ids, labels=labels)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, *, group_batches: int = 50
) -> list[list[int]]:
    """Shuffled training batches of similar length.

    The rows are shuffled, cut into groups of ``group_batches`` batches, sorted by length within
    each group and cut into batches, and the batches are shuffled. Random batches pad each row
    to the longest of 32 random rows: on SST-2 train (13 tokens on average, 66 at most) that is
    about three times the compute of the real tokens. Grouping keeps batch composition random
    enough for SGD while padding little (the HF Trainer's ``group_by_length``, the same idea).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda index: lengths[index])
        batches.extend(chunk[cut : cut + batch_size] for cut in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Evaluation batches from the shared planner, capped by rows only (order does not matter)."""
    unbounded_tokens = batch_size * max([1, *lengths])  # the rows cap alone decides
    return plan_batches(lengths, BatchLimits(batch_size, max_batch_tokens=unbounded_tokens))


def collate(
    data: EncodedSet, indices: Sequence[int], pad_token_id: int, device: Any
) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for the rows ``indices`` (and their targets, if any)."""
    import torch

    width = max(len(data.input_ids[index]) for index in indices)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long)
    for row, index in enumerate(indices):
        ids = data.input_ids[index]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        if data.token_type_ids is not None:
            token_type_ids[row, : len(ids)] = torch.tensor(data.token_type_ids[index])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    for name, values in data.target_columns().items():
        batch[name] = torch.tensor([values[index] for index in indices], dtype=torch.long)
    return {name: tensor.to(device) for name, tensor in batch.items()}


def fingerprint(*parts: str | bytes) -> str:
    """A short sha256 over the parts, for cache keys."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def checkpoint_fingerprint(folder: Path) -> str:
    """Identify a checkpoint by the bytes of its config and weights (not its path or mtime)."""
    digest = hashlib.sha256()
    names = sorted(
        path.name
        for path in folder.iterdir()
        if path.name == "config.json" or path.suffix in {".safetensors", ".bin"}
    )
    for name in names:
        digest.update(name.encode())
        with (folder / name).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:24]


def data_fingerprint(data: EncodedSet) -> str:
    """Identify tokenized inputs: same tokens, same teacher logits."""
    payload = json.dumps([data.input_ids, data.token_type_ids], separators=(",", ":"))
    return fingerprint(payload)


def load_cached_logits(path: Path, rows: int) -> np.ndarray | None:
    # (rows, labels) for classification, (rows, 2, tokens) for question answering.
    """Cached logits at ``path``, or None when absent or of the wrong shape (a stale file)."""
    if not path.is_file():
        return None
    try:
        logits: np.ndarray = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if logits.ndim < 2 or logits.shape[0] != rows:
        return None
    return logits.astype(np.float32, copy=False)


def save_cached_logits(path: Path, logits: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so that an interrupted run never leaves a truncated cache entry; the
    # partial file is per process, as runs of a sweep may fill the same entry at once.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial.npy")
    np.save(partial, logits.astype(np.float32, copy=False), allow_pickle=False)
    partial.replace(path)
