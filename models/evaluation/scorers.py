"""The models ``distilserve eval`` scores, behind one small interface per task.

* ``BundleScorer``: a distilserve bundle (int8 or fp32) through ``ModelRuntime.predict``, the
  offline path of the server (same tokenizer, same processors, length-grouped batches).
* ``TorchScorer``: the PyTorch source checkpoint through transformers: the
  ``text-classification`` and ``question-answering`` pipelines' models, mean/CLS pooling for
  embeddings. torch and transformers are imported here, lazily, and only when it is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from distilserve.models.batching import OFFLINE_BATCH_LIMITS, plan_batches
from distilserve.models.bundle import Pooling
from distilserve.models.engines import EngineChoice
from distilserve.models.evaluation.data import SquadExample
from distilserve.models.runtime import load_model
from distilserve.models.session import SessionOptions
from distilserve.models.tasks import LabelScore, QAInput

# Label names that mean SST-2's classes, whatever casing a checkpoint's config uses.
POSITIVE_NAMES = frozenset({"positive", "pos", "label_1"})
NEGATIVE_NAMES = frozenset({"negative", "neg", "label_0"})


def sst2_class(label: str, index: int, num_labels: int) -> int | None:
    """SST-2's class (1 positive, 0 negative) of a predicted label, by name when it has one.

    A two-label model with unnamed labels is read by index; a label that is neither (a third,
    neutral class) predicts no SST-2 class and counts as wrong.
    """
    name = label.strip().lower()
    if name in POSITIVE_NAMES:
        return 1
    if name in NEGATIVE_NAMES:
        return 0
    if num_labels == 2 and index in (0, 1):
        return index
    return None


class Scorer(Protocol):
    name: str
    kind: str

    def classify(self, texts: Sequence[str]) -> list[int | None]: ...

    def answer(self, examples: Sequence[SquadExample]) -> list[str]: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class BundleScorer:
    def __init__(
        self,
        bundle: Path,
        name: str,
        *,
        batch_size: int = OFFLINE_BATCH_LIMITS.max_batch_size,
        max_batch_tokens: int = OFFLINE_BATCH_LIMITS.max_batch_tokens,
        engine: EngineChoice = "onnxruntime",
    ) -> None:
        self.name = name
        self.runtime = load_model(bundle, SessionOptions(), engine=engine)
        selection = self.runtime.selection
        self.kind = f"{selection.engine} {selection.precision}"
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens

    @property
    def pooling(self) -> Pooling:
        return self.runtime.manifest.pooling or "mean"

    def _predict(self, items: Sequence[Any]) -> list[Any]:
        return self.runtime.predict(
            items, max_batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens
        )

    def classify(self, texts: Sequence[str]) -> list[int | None]:
        num_labels = len(self.runtime.manifest.labels)
        results: list[list[LabelScore]] = self._predict(texts)
        return [sst2_class(best[0].label, best[0].index, num_labels) for best in results]

    def answer(self, examples: Sequence[SquadExample]) -> list[str]:
        items = [QAInput(question=example.question, context=example.context) for example in examples]
        return [answers[0].answer if answers else "" for answers in self._predict(items)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack(self._predict(texts)).astype(np.float32)


class TorchScorer:
    """A Hugging Face checkpoint folder in PyTorch fp32, run the way transformers users run it."""

    def __init__(
        self,
        source: str,
        name: str = "PyTorch source",
        *,
        batch_size: int = OFFLINE_BATCH_LIMITS.max_batch_size,
        max_length: int = 512,
        pooling: Pooling = "mean",
    ) -> None:
        import torch

        self.torch = torch
        self.name = name
        self.kind = "PyTorch fp32"
        self.source = source
        self.batch_size = batch_size
        self.max_length = max_length
        self.pooling = pooling
        self._model: Any = None
        self._tokenizer: Any = None
        self._pipeline: Any = None

    def _load(self, factory_name: str) -> tuple[Any, Any]:
        import transformers

        if self._model is None:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.source)
            factory = getattr(transformers, factory_name)
            self._model = factory.from_pretrained(self.source).eval()
        return self._model, self._tokenizer

    def _batches(self, tokenizer: Any, texts: Sequence[str]) -> Iterator[tuple[list[int], Any]]:
        """Batches from the shared planner over token lengths (as the bundle scorer's ``predict``
        makes them, so both pad alike): row indices and their tokenized tensors."""
        encoded = tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        limits = replace(OFFLINE_BATCH_LIMITS, max_batch_size=self.batch_size)
        for rows in plan_batches([len(ids) for ids in encoded], limits):
            batch = tokenizer(
                [texts[row] for row in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            yield rows, batch

    def classify(self, texts: Sequence[str]) -> list[int | None]:
        model, tokenizer = self._load("AutoModelForSequenceClassification")
        id2label: dict[int, str] = dict(model.config.id2label)
        predictions: list[int | None] = [None] * len(texts)
        with self.torch.inference_mode():
            for rows, batch in self._batches(tokenizer, texts):
                best = model(**batch).logits.argmax(-1).tolist()
                for row, index in zip(rows, best, strict=True):
                    predictions[row] = sst2_class(id2label.get(index, ""), index, len(id2label))
        return predictions

    def answer(self, examples: Sequence[SquadExample]) -> list[str]:
        from transformers import pipeline

        if self._pipeline is None:
            # The pipeline is the reference the QA processor reproduces: same windows, same decoding.
            self._pipeline = pipeline(
                "question-answering", model=self.source, tokenizer=self.source, device=-1
            )
        outputs = self._pipeline(
            question=[example.question for example in examples],
            context=[example.context for example in examples],
            batch_size=self.batch_size,
        )
        if isinstance(outputs, dict):
            outputs = [outputs]
        return [str(output["answer"]) for output in outputs]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model, tokenizer = self._load("AutoModel")
        vectors: list[np.ndarray] = [np.empty(0)] * len(texts)
        with self.torch.inference_mode():
            for rows, batch in self._batches(tokenizer, texts):
                hidden = model(**batch).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                for row, vector in zip(rows, pooled.numpy(), strict=True):
                    vectors[row] = vector
        return np.stack(vectors).astype(np.float32)
