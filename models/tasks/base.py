"""The contract every task processor follows.

A processor turns one input item into model rows (``prepare``), turns a batch's raw outputs
into per-row outputs (``split_outputs``, vectorised over the whole batch), and turns the
outputs of one item's rows into its result (``finish``). The batching and session mechanism
(offline in ``distilserve.models.runtime``, online in ``distilserve.server.batching``) is the same
for every task and never looks inside these.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from distilserve.models.batching import BatchArrays, EncodedRow
from distilserve.models.bundle import Manifest, Task
from distilserve.models.tokenization import ThreadSafeTokenizer

ItemT = TypeVar("ItemT")
ParamsT = TypeVar("ParamsT")
ResultT = TypeVar("ResultT")


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

    @abstractmethod
    def default_params(self) -> ParamsT:
        """The parameters used when a caller gives none."""

    @abstractmethod
    def prepare(self, item: ItemT, params: ParamsT) -> Prepared:
        """Tokenize one item. Raises ``InputError`` for input the model cannot take."""

    @abstractmethod
    def split_outputs(self, outputs: dict[str, np.ndarray], batch: BatchArrays) -> Sequence[Any]:
        """Per-row outputs of one batch, in row order. Runs once per batch, so vectorise here."""

    @abstractmethod
    def finish(self, prepared: Prepared, row_outputs: Sequence[Any], params: ParamsT) -> ResultT:
        """The result of one item from the outputs of its rows."""
