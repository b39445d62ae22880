"""Built-in sample inputs for the export's parity and agreement checks.

They are chosen to exercise what breaks exported graphs: one-token and near-limit lengths
(dynamic sequence axis), batches of one and batches with heavy padding (dynamic batch axis and
the attention mask), digits, punctuation, accents, non-Latin scripts and emoji (unknown-token
paths), and question/context pairs (segment ids and the second sequence's truncation).

``--samples FILE`` adds the user's own: one sample per line; for question answering each line
is ``question<TAB>context``. Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from distilserve.models.errors import ExportError

SAMPLE_TEXTS: tuple[str, ...] = (
    "Hi.",
    "ok",
    "The film was wonderful from start to finish.",
    "This movie is terrible, and the plot makes no sense at all!",
    "I expected more... but the soundtrack was brilliant.",
    "The service at our hotel was slow, yet the staff were charming.",
    "My order #4521 arrived 3 days late (on 12/05/2023) and cost $49.99.",
    "Absolutely unbearable. Two hours I will never get back.",
    "Not bad, not great: a perfectly mediocre evening at the cinema.",
    "The battery of this phone lasts about 18 hours; charging takes 45 minutes.",
    "Café crème, naïve résumé, São Paulo and Zürich are names with accents.",
    "東京は日本の首都です。",
    "I loved it 😀👍 would watch again!!!",
    "What a surprising, moving and utterly delightful little story about friendship.",
    "The flight was delayed, the food was cold, the seats were cramped, and the crew seemed "
    "exhausted, but the pilot landed so smoothly in the storm that everyone applauded.",
    "A sentence that repeats itself. " * 12,
    (
        "In the beginning the director promised an epic, and for the first hour the film delivers: "
        "sweeping landscapes, a restless score, and performances that feel lived in rather than "
        "acted. Then the second act collapses under its own ambitions, with subplots introduced "
        "and abandoned, characters who change their minds without reason, and a romance that "
        "nobody asked for. By the time the final battle arrives, most of the audience around me "
        "had stopped caring, which is a pity, because the last ten minutes are some of the most "
        "beautiful images I have seen on a screen this year. Whether that is worth three hours "
        "of your evening is a question only you can answer, but I would wait for the streaming "
        "release, a comfortable sofa and a pause button."
    ),
    "the the the the the",
    "Is this a question?",
    "42",
    "Service: 5/5. Food: 2/5. Price: 4/5. Would I come back? Probably not.",
    "The teacher remained patient even when the class became loud after lunch.",
    "According to everyone, the actor looked exhausted but the performance felt excellent.",
    "UPPERCASE TEXT SHOULD BE HANDLED THE SAME WAY BY AN UNCASED MODEL.",
)

SAMPLE_QA_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "Where is the Eiffel Tower?",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built it.",
    ),
    (
        "When was the tower completed?",
        "Construction of the tower began in January 1887 and was completed in March 1889, in time "
        "for the World's Fair that marked the centennial of the French Revolution.",
    ),
    (
        "Who wrote the novel?",
        "The novel was written by Mary Shelley and first published anonymously in London in 1818.",
    ),
    (
        "How long does the battery last?",
        "The phone's battery lasts about 18 hours of mixed use, and a full charge takes 45 minutes "
        "with the bundled adapter.",
    ),
    ("What colour is the sky?", "On a clear day the sky is blue."),
    (
        "Which river flows through the city?",
        "The Danube flows through Budapest, dividing the hilly Buda side from the flat Pest side. "
        "Several bridges connect the two halves, the oldest being the Chain Bridge, opened in 1849. "
        "The river is also important for shipping, tourism and the city's many thermal baths, which "
        "draw visitors from all over Europe throughout the year, in every season and in any weather.",
    ),
    (
        "What did the committee decide after a very long and quite heated discussion on Tuesday?",
        "After a long debate, the committee decided to postpone the vote until next spring.",
    ),
    ("Why?", "Because it rained, the match was cancelled and moved to Sunday."),
)

# Sizes of consecutive sample batches, repeated: singletons and padded batches of mixed length.
BATCH_SIZES: tuple[int, ...] = (1, 4, 8, 3)


@dataclass(frozen=True, slots=True)
class SampleSet:
    """Inputs of one task: texts, or (question, context) pairs for question answering."""

    texts: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.pairs) if self.pairs else len(self.texts)


def builtin_samples(task: str) -> SampleSet:
    if task == "question-answering":
        return SampleSet(pairs=SAMPLE_QA_PAIRS)
    return SampleSet(texts=SAMPLE_TEXTS)


def read_sample_file(path: Path, task: str) -> SampleSet:
    """The extra samples of ``--samples FILE`` (see the module docstring for the format)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read the samples file ({exc})") from exc
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ExportError(f"{path}: the samples file has no samples")
    if task != "question-answering":
        return SampleSet(texts=tuple(entries))
    pairs = []
    for number, line in enumerate(entries, start=1):
        question, sep, context = line.partition("\t")
        if not sep or not question.strip() or not context.strip():
            raise ExportError(f"{path}: sample {number} is not 'question<TAB>context'")
        pairs.append((question, context))
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
