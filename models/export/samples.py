"""The sample inputs of the export's parity and agreement checks, and their batches.

Each task declares its built-in samples in its ``TaskSpec`` (the texts and pairs themselves are
in ``distilserve.models.tasks.samples``); they are cut into batches of one and batches with
heavy padding (dynamic batch axis and the attention mask).

``--samples FILE`` adds the user's own: one sample per line; for a pair task each line is the
two halves separated by a tab (``question<TAB>context`` for question answering,
``query<TAB>document`` for rerank). Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from distilserve.models.errors import ExportError
from distilserve.models.tasks import task_spec
from distilserve.models.tasks.samples import SAMPLE_QA_PAIRS, SAMPLE_RERANK_PAIRS, SAMPLE_TEXTS

__all__ = ["SAMPLE_QA_PAIRS", "SAMPLE_RERANK_PAIRS", "SAMPLE_TEXTS", "SampleSet", "export_samples"]

# Sizes of consecutive sample batches, repeated: singletons and padded batches of mixed length.
BATCH_SIZES: tuple[int, ...] = (1, 4, 8, 3)


@dataclass(frozen=True, slots=True)
class SampleSet:
    """Inputs of one task: texts, or pairs (question and context, query and document)."""

    texts: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs else len(self.texts)


def builtin_samples(task: str) -> SampleSet:
    spec = task_spec(task)
    return SampleSet(texts=spec.sample_texts, pairs=spec.sample_pairs)


def read_sample_file(path: Path, task: str) -> SampleSet:
    """The extra samples of ``--samples FILE`` (see the module docstring for the format)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the samples file ({exc})") from exc
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ExportError(f"{path}: the samples file has no samples")
    fields = task_spec(task).pair_fields
    if fields is None:
        return SampleSet(texts=tuple(entries))
    pairs = []
    for number, line in enumerate(entries, start=1):
        first, sep, second = line.partition("\t")
        if not sep or not first.strip() or not second.strip():
            raise ExportError(f"{path}: sample {number} is not '{fields[0]}<TAB>{fields[1]}'")
        pairs.append((first, second))
    return SampleSet(pairs=tuple(pairs))


def export_samples(task: str, extra_file: Path | None = None) -> SampleSet:
    """The built-in samples of ``task``, plus those of ``extra_file`` when given."""
    samples = builtin_samples(task)
    if extra_file is None:
        return samples
    extra = read_sample_file(extra_file, task)
    return SampleSet(texts=samples.texts + extra.texts, pairs=samples.pairs + extra.pairs)


def batch_slices(count: int, sizes: Sequence[int] = BATCH_SIZES) -> Iterator[slice]:
    """Cut ``count`` samples into consecutive batches of the cycling ``sizes``."""
    start, turn = 0, 0
    while start < count:
        stop = min(count, start + sizes[turn % len(sizes)])
        yield slice(start, stop)
        start, turn = stop, turn + 1
