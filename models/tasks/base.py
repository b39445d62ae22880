"""The contract every task follows: its processor (``TaskProcessor``) and its declaration (``TaskSpec``).

A processor turns one input item into model rows (``prepare``), turns a batch's raw outputs
into per-row outputs (``split_outputs``, vectorised over the whole batch), and turns the
outputs of one item's rows into its result (``finish``). The batching and session mechanism
(offline in ``distilserve.models.runtime``, online in ``distilserve.server.batching``) is the same
for every task and never looks inside these.

A ``TaskSpec`` is everything else that varies per task, declared once beside its processor:
the Hugging Face head the export loads, the graph outputs it keeps, the sample inputs and
agreement metrics of the export's checks. The export and the server read it from the
registry in ``distilserve.models.tasks`` and never test a task's name.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import Manifest, Pooling, ProblemType, Task
from distilserve.models.errors import InputError
from distilserve.models.tokenization import ThreadSafeTokenizer

if TYPE_CHECKING:
    from distilserve.models.export.parity import Thresholds

ItemT = TypeVar("ItemT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")

# A short sentence run through every model before the server reports ready (``warmup_item``).
WARMUP_TEXT = "Warm-up sentence for the model."


@dataclass(slots=True)
class Prepared:
    """One input item, tokenized: its rows, what ``finish`` needs, and its token count."""

    rows: list[EncodedRow]
    context: Any
    num_tokens: int


class TaskProcessor(ABC, Generic[ItemT, ParamsT, ResultT]):
    task: ClassVar[Task]

    def __init__(self, manifest: Manifest, tokenizer: ThreadSafeTokenizer) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer

    def warmup_item(self) -> ItemT:
        """An item the server runs once before it reports ready, so the first real request does
        not pay for ONNX Runtime's lazy initialisation. Text tasks take a sentence."""
        return WARMUP_TEXT  # type: ignore[return-value]

    def item_chars(self, item: ItemT) -> int:
        """Characters of an item, to decide whether tokenizing it on the event loop is cheap;
        ``sys.maxsize`` for an item of unknown size (it is never tokenized on the loop)."""
        return len(item) if isinstance(item, str) else sys.maxsize

    @abstractmethod
    def default_params(self) -> ParamsT:
        """The parameters used when a caller gives none."""

    @abstractmethod
    def prepare(self, item: ItemT, params: ParamsT) -> Prepared:
        """Tokenize one item. Raises ``InputError`` for input the model cannot take."""

    def prepare_each(self, items: Sequence[ItemT], params: ParamsT) -> list[Prepared | InputError]:
        """Tokenize several items, one result per item in order: its ``Prepared``, or the
        ``InputError`` that ``prepare`` raises for it. Tasks that can encode a list in one
        tokenizer call override this; the results are the same as ``prepare`` one by one."""
        results: list[Prepared | InputError] = []
        for item in items:
            try:
                results.append(self.prepare(item, params))
            except InputError as exc:
                results.append(exc)
        return results

    @abstractmethod
    def split_outputs(self, outputs: dict[str, np.ndarray], batch: BatchArrays) -> Sequence[Any]:
        """Per-row outputs of one batch, in row order. Runs once per batch, so vectorise here."""

    @abstractmethod
    def finish(self, prepared: Prepared, row_outputs: Sequence[Any], params: ParamsT) -> ResultT:
        """The result of one item from the outputs of its rows."""


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """One padded batch of the export's samples; ``context_mask`` marks the second text's tokens
    of pair samples (QA's answer candidates)."""

    feed: dict[str, np.ndarray]
    context_mask: np.ndarray | None

    @property
    def attention_mask(self) -> np.ndarray:
        return self.feed["attention_mask"]


@dataclass(frozen=True, slots=True)
class AgreementContext:
    """What an agreement metric may need of the checkpoint beside the outputs."""

    problem_type: ProblemType | None = None
    pooling: Pooling = "mean"


# int8 agreement: (fp32 outputs, int8 outputs, the sample batches, the checkpoint's facts) -> metrics.
AgreementMetrics = Callable[
    [Sequence[Outputs], Sequence[Outputs], Sequence[SampleBatch], AgreementContext], dict[str, float]
]


@dataclass(frozen=True)
class TaskSpec:
    """One task's declaration: what the runtime, the server and the export need to know of it.

    * ``processor``: the runtime half (tokenize, split outputs, finish; its ``warmup_item`` and
      ``item_chars`` are what the server asks of it).
    * ``hf_auto_class`` / ``optimum_task``: the transformers class the export loads the
      checkpoint with, and the task Optimum's ONNX exporter is asked for.
    * ``outputs``: the graph outputs the processor reads (the bundle keeps only these).
    * ``architecture_suffix``: a config ``architectures`` entry ending so is this task
      (``infer_task``); ``base_encoder``: a bare encoder or sentence-transformers folder is.
      A task with neither needs ``--task``.
    * ``labels``: the checkpoint's ``id2label`` and ``problem_type`` go into the manifest;
      ``pooling``: its sentence-embedding pooling and normalization do.
    * ``check_config``: a problem with the checkpoint's config in words, or None.
    * ``sample_texts`` / ``sample_pairs`` (with ``pair_fields``, the two halves' names in
      ``--samples`` lines and errors): the export's built-in sample inputs.
    * ``agreement`` / ``thresholds`` / ``lower_bounds`` / ``upper_bounds``: the int8-vs-fp32
      metrics, the marks they are held to, and the direction of each thresholded metric.
    * ``per_sequence_outputs``: the head reads one position per sequence (``[CLS]``), so the
      packed graph takes ``segment_starts`` and answers one row per sequence
      (``distilserve.models.packing``); otherwise its outputs are per token.
    * ``packed_by_default``: ``export --graph-form auto`` packs this task's BERT checkpoints.
      Off where sequences are long: a packed batch is as wide as its longest sequence, so rows
      longer than ``DEFAULT_ROW_TOKENS`` gain nothing from packing and pay its 3-D mask.
    """

    name: Task
    processor: type[TaskProcessor[Any, Any, Any]]
    hf_auto_class: str
    optimum_task: str
    outputs: tuple[str, ...]
    agreement: AgreementMetrics
    thresholds: Callable[[Thresholds], dict[str, float]]
    lower_bounds: frozenset[str] = frozenset()
    upper_bounds: frozenset[str] = frozenset()
    architecture_suffix: str | None = None
    architecture_hint: str = ""
    base_encoder: bool = False
    labels: bool = False
    pooling: bool = False
    check_config: Callable[[Any], str | None] | None = None
    sample_texts: tuple[str, ...] = ()
    sample_pairs: tuple[tuple[str, str], ...] = ()
    pair_fields: tuple[str, str] | None = None
    per_sequence_outputs: bool = False
    packed_by_default: bool = True
