"""``distilserve distill --task rerank``: a cross-encoder that scores (question, passage) pairs.

The same loop as the other tasks (``trainer.train``); what differs is the data, the objective and
the dev score:

* **Data.** From SQuAD v1.1 JSON: one *list* per question, its positive (the paragraph that holds
  the answer) first, then ``--negatives`` hard negatives: the other paragraphs of the same article
  that BM25 (``bm25s``, English stop words) ranks highest for the question. BM25 rather than the
  shipped embedding model because it costs seconds instead of an encoding pass over every train
  paragraph on a CPU, and because its mistakes are lexical look-alikes, the ones a dense
  retriever's top 20 is also full of. An article too small for a full list is filled with seeded
  random paragraphs of other articles (the record counts them). Each pair is
  ``[CLS] question [SEP] passage [SEP]``, the passage truncated (``--max-length``, default 256).
* **Model.** A sequence classifier with one logit, the relevance score: in finetune mode a base
  encoder (all-MiniLM-L6-v2) with a new head; in distill mode a student of the teacher's layers.
* **Objective.** Finetune: listwise softmax cross-entropy over each list, the positive the target
  (``--rerank-loss bce`` for per-pair binary cross-entropy instead). Distill: the DistilBERT
  recipe the other tasks use, on each list's scores: ``alpha * T^2 * KL`` against the teacher's
  (cached) list scores plus ``beta`` times the listwise cross-entropy, and with
  ``--cosine-weight`` the cosine between the student's and the teacher's last hidden states of
  every pair (``trainer.RerankDistillObjective``; the teacher then runs on every batch).
* **Dev score.** MRR and accuracy (the positive ranked first) of the model's order of each dev or
  validation list, and with a teacher the agreement of the two top passages; it picks the kept
  checkpoint.

    # the teacher: all-MiniLM-L6-v2 with a one-logit head, fine-tuned on lists of SQuAD train
    distilserve distill MINILM_L6 --task rerank --mode finetune --train-file squad_v1.1_train.json \
        --validation-rows 40 --max-train-samples 480 --negatives 3 --max-length 128 --batch-size 8 \
        --lr 1e-4 --warmup-ratio 0.1 --precision bf16 --output runs/rerank/teacher
    # the student: three of its layers (the last one kept: it holds the [CLS] readout), distilled
    distilserve distill runs/rerank/teacher --task rerank --student-layers 0 2 5 (same data options) \
        --output runs/rerank/student

Those are the sizes a 2-core CPU shared with other jobs allowed (60 steps, 32 pairs each); they
are far too small for a usable reranker (the loss stays at log(list size) for the first ~20 steps):
give it thousands of steps, where a GPU is at hand.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distilserve.models.distill.data import DataError, EncodedSet, collate
from distilserve.models.distill.squad import SquadQuestion

if TYPE_CHECKING:
    import torch

    from distilserve.models.distill.cli import Settings

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 256


@dataclass(frozen=True, slots=True)
class RerankList:
    """One question and its passages: the positive first, then the negatives."""

    question_id: str
    question: str
    passages: tuple[str, ...]
    # How many of the negatives are paragraphs of the question's own article (the rest: corpus
    # negatives from other articles, or random ones where the article was too small).
    article_negatives: int


@dataclass(frozen=True)
class ArticleParagraphs:
    """The distinct paragraphs of each article, in file order."""

    paragraphs: dict[str, list[str]]

    @classmethod
    def of(cls, questions: Sequence[SquadQuestion]) -> ArticleParagraphs:
        paragraphs: dict[str, list[str]] = {}
        seen: set[tuple[str, str]] = set()
        for question in questions:
            key = (question.article, question.context)
            if key not in seen:
                seen.add(key)
                paragraphs.setdefault(question.article, []).append(question.context)
        return cls(paragraphs)

    @property
    def count(self) -> int:
        return sum(len(texts) for texts in self.paragraphs.values())


def _bm25_rankings(paragraphs: list[str], queries: list[str], depth: int) -> np.ndarray:
    """For each query, the indices of its ``depth`` best paragraphs by BM25, best first."""
    import bm25s

    # bm25s logs each index build at debug level: one line per article.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(paragraphs, stopwords="en", show_progress=False, return_ids=False),
        show_progress=False,
    )
    # Token strings, not ids: ids from two tokenize calls come from two vocabularies.
    tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False, return_ids=False)
    results, _ = retriever.retrieve(tokens, k=min(depth, len(paragraphs)), show_progress=False)
    return np.asarray(results)


def build_rerank_lists(
    questions: Sequence[SquadQuestion],
    pool: ArticleParagraphs,
    negatives: int,
    seed: int,
    source: Path,
    corpus_negatives: int = 0,
) -> list[RerankList]:
    """One list per question: its paragraph, then ``negatives`` hard negatives.

    The first ``corpus_negatives`` of them are the best BM25 hits for the question among *all* the
    pool's paragraphs, as a retriever over the whole corpus finds them at serving time (the eval's
    top 20 come from every dev article); the rest are the hardest paragraphs of its own article.
    ``pool`` holds every paragraph of the file (also those of questions left out of training), so
    that negatives are drawn from whole articles. A paragraph identical in text to the positive is
    never a negative, and no passage appears twice in a list. Raises DataError for a question with
    no text, one whose paragraph is not in the pool, or a pool too small for a list.
    """
    if negatives < 1:
        raise ValueError(f"a list needs at least one negative, got {negatives}")
    if not 0 <= corpus_negatives <= negatives:
        raise ValueError(
            f"corpus negatives must be between 0 and the {negatives} negatives, got {corpus_negatives}"
        )
    if pool.count < negatives + 1:
        raise DataError(
            source,
            f"{pool.count} distinct paragraphs: a list of a positive and {negatives} negatives "
            f"needs at least {negatives + 1}",
        )
    for question in questions:
        if not question.question.strip():
            raise DataError(source, f"question {question.id!r} has no text")
        if question.context not in pool.paragraphs.get(question.article, ()):
            raise DataError(source, f"question {question.id!r}: its paragraph is not in its article")
    rng = random.Random(seed)
    by_article: dict[str, list[int]] = {}
    for index, question in enumerate(questions):
        by_article.setdefault(question.article, []).append(index)
    every_paragraph = [(article, text) for article, texts in pool.paragraphs.items() for text in texts]
    corpus_picks: list[list[tuple[str, str]]] = [[] for _ in questions]
    if corpus_negatives:
        # Deep enough to skip the positive and its duplicates (the same text under several ids).
        corpus_rankings = _bm25_rankings(
            [text for _, text in every_paragraph],
            [question.question for question in questions],
            depth=corpus_negatives + 4,
        )
        for picks, question, ranking in zip(corpus_picks, questions, corpus_rankings, strict=True):
            for rank in ranking:
                article, text = every_paragraph[int(rank)]
                if text != question.context and all(text != seen for _, seen in picks):
                    picks.append((article, text))
                    if len(picks) == corpus_negatives:
                        break
    lists: list[RerankList | None] = [None] * len(questions)
    for article, indices in by_article.items():
        paragraphs = pool.paragraphs[article]
        rankings = _bm25_rankings(
            paragraphs, [questions[index].question for index in indices], depth=negatives + 1
        )
        for index, ranking in zip(indices, rankings, strict=True):
            question = questions[index]
            picked = corpus_picks[index]
            chosen = [text for _, text in picked]
            for rank in ranking:
                text = paragraphs[int(rank)]
                if len(chosen) < negatives and text != question.context and text not in chosen:
                    chosen.append(text)
            from_article = sum(1 for other, _ in picked if other == article) + len(chosen) - len(picked)
            while len(chosen) < negatives:
                # A small article: fill with random paragraphs of other articles (easy negatives).
                other_article, text = every_paragraph[rng.randrange(len(every_paragraph))]
                if other_article != article and text != question.context and text not in chosen:
                    chosen.append(text)
            lists[index] = RerankList(
                question.id, question.question.strip(), (question.context, *chosen), from_article
            )
    return [entry for entry in lists if entry is not None]


@dataclass
class RerankLists:
    """Tokenized lists for the training loop: a row is a list, batched as all its pairs.

    ``pairs`` holds the pairs list-major (list ``i``'s at ``i * list_size`` onwards, the positive
    first). A row's length, for length-grouped batches, is its longest pair.
    """

    pairs: EncodedSet
    list_size: int
    lists: list[RerankList]

    def __len__(self) -> int:
        return len(self.lists)

    @property
    def lengths(self) -> list[int]:
        pair_lengths = self.pairs.lengths
        return [
            max(pair_lengths[start : start + self.list_size])
            for start in range(0, len(pair_lengths), self.list_size)
        ]

    @property
    def num_tokens(self) -> int:
        return self.pairs.num_tokens

    def pair_indices(self, indices: Sequence[int]) -> list[int]:
        return [index * self.list_size + offset for index in indices for offset in range(self.list_size)]

    def collate(self, indices: Sequence[int], pad_token_id: int, device: Any) -> dict[str, torch.Tensor]:
        return collate(self.pairs, self.pair_indices(indices), pad_token_id, device)


def encode_lists(tokenizer: Any, lists: Sequence[RerankList], max_length: int) -> RerankLists:
    """``[CLS] question [SEP] passage [SEP]`` for every pair, the passage truncated to fit."""
    sizes = {len(entry.passages) for entry in lists}
    if len(sizes) != 1:
        raise ValueError(f"every list must have the same size, got sizes {sorted(sizes)}")
    questions = [entry.question for entry in lists for _ in entry.passages]
    passages = [passage for entry in lists for passage in entry.passages]
    # longest_first cuts the passage (the longer side) alone unless a question is itself longer
    # than the budget, which only_second would refuse with an error.
    encoded = tokenizer(questions, passages, truncation="longest_first", max_length=max_length, padding=False)
    type_ids = encoded.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    pairs = EncodedSet(input_ids=encoded["input_ids"], token_type_ids=type_ids, labels=None)
    return RerankLists(pairs=pairs, list_size=sizes.pop(), lists=list(lists))


def list_scores(model_logits: np.ndarray, list_size: int) -> np.ndarray:
    """``(pairs, 1)`` relevance logits as ``(lists, list_size)`` rows."""
    return np.asarray(model_logits, dtype=np.float32).reshape(-1, list_size)


def list_metrics(scores: np.ndarray, teacher_scores: np.ndarray | None = None) -> dict[str, float]:
    """MRR and accuracy of the positive (column 0) in each list's order, ties ranked against it;
    with the teacher's scores, the share of lists whose top passage both models agree on."""
    ranks = 1 + (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
    metrics = {"mrr": float(np.mean(1.0 / ranks)), "accuracy": float(np.mean(ranks == 1))}
    if teacher_scores is not None:
        metrics["agreement"] = float(np.mean(scores.argmax(axis=1) == teacher_scores.argmax(axis=1)))
    return metrics


class RerankFinetuneObjective:
    """Listwise softmax cross-entropy (or per-pair BCE) over each list's scores."""

    def __init__(self, list_size: int, loss: str = "listwise") -> None:
        if loss not in ("listwise", "bce"):
            raise ValueError(f"unknown rerank loss {loss!r}")
        self.list_size = list_size
        self.loss = loss

    def __call__(
        self, model: Any, batch: dict[str, torch.Tensor], indices: list[int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from distilserve.models.distill.losses import listwise_softmax_ce, pointwise_bce
        from distilserve.models.distill.trainer import model_inputs, relevance_lists

        scores = relevance_lists(model(**model_inputs(batch)).logits, self.list_size)
        loss = listwise_softmax_ce(scores) if self.loss == "listwise" else pointwise_bce(scores)
        return loss, {self.loss: float(loss.detach())}


def attend_evenly_from_cls(model: Any) -> bool:
    """Zero the last layer's attention queries, so that every position, [CLS] included, starts by
    attending to all tokens evenly; returns whether the model has such a layer (BERT-style).

    A sentence-embedding model trained with mean pooling (all-MiniLM-L6-v2) leaves its [CLS]
    output almost the same for every input (measured: the 384 values differ by about 1e-3 between
    pairs, the head's logits by 1e-4), and the new one-logit head reads [CLS] alone: listwise
    training then starts from noise and did not move the loss in a few hundred pairs. With zero
    queries the last layer's [CLS] output holds the mean of its values over the pair (a mean
    pooling, inside the standard architecture, so export and serving are unchanged); the queries
    are trained from there like every other weight. The other positions' outputs of that layer
    change too, but a sequence classifier reads only [CLS].
    """
    layers = getattr(getattr(getattr(model, "base_model", None), "encoder", None), "layer", None)
    query = (
        getattr(getattr(getattr(layers[-1], "attention", None), "self", None), "query", None)
        if layers
        else None
    )
    if query is None:
        return False
    import torch

    with torch.no_grad():
        query.weight.zero_()
        if query.bias is not None:
            query.bias.zero_()
    return True


def train_reranker(settings: Settings) -> dict[str, Any]:
    """Run one fine-tuning or distillation job of a cross-encoder; returns its record."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from distilserve.models.distill.run import (
        Job,
        distill_weights,
        environment_record,
        finetuned_model,
        fit,
        has_architecture,
        model_record,
        start_run,
        student_layers,
        teacher_logits,
    )
    from distilserve.models.distill.squad import read_id_list, read_squad_questions, subsample_questions
    from distilserve.models.distill.student import build_student, num_layers
    from distilserve.models.distill.trainer import (
        EvalRecord,
        Objective,
        RerankDistillObjective,
        predict_logits,
    )

    if settings.best_metric in ("f1", "exact_match"):
        raise ValueError(
            f"a reranker's checkpoint is picked by mrr, accuracy or agreement, not {settings.best_metric}"
        )
    max_length = settings.max_length or DEFAULT_MAX_LENGTH
    start = start_run(settings)
    device, tokenizer, pad_token_id = start.device, start.tokenizer, start.pad_token_id
    teacher_dir = settings.teacher
    bf16 = settings.precision == "bf16"

    teacher_config = transformers.AutoConfig.from_pretrained(teacher_dir)
    if settings.mode == "distill" and not (
        has_architecture(teacher_config, "ForSequenceClassification") and teacher_config.num_labels == 1
    ):
        raise ValueError(
            f"{teacher_dir} is not a one-logit cross-encoder; fine-tune it first "
            "(--mode finetune --task rerank) to make the teacher"
        )

    # Every question of the file makes the paragraph pool; the excluded ones only leave training.
    all_questions = read_squad_questions(settings.train_file)
    pool = ArticleParagraphs.of(all_questions)
    excluded = read_id_list(settings.exclude_ids_file) if settings.exclude_ids_file else set()
    candidates = [question for question in all_questions if question.id not in excluded]
    validation: list[SquadQuestion] = []
    if settings.validation_rows is not None:
        if not 0 < settings.validation_rows < len(candidates):
            raise DataError(
                settings.train_file,
                f"cannot hold out {settings.validation_rows} of {len(candidates)} questions",
            )
        # Held out before subsampling, so the held-out questions depend on the seed alone.
        held = set(random.Random(settings.seed).sample(range(len(candidates)), settings.validation_rows))
        validation = [question for index, question in enumerate(candidates) if index in held]
        candidates = [question for index, question in enumerate(candidates) if index not in held]
    train_questions = subsample_questions(candidates, settings.max_train_samples, settings.seed)
    dev_source = settings.train_file
    dev_questions = validation or None
    dev_pool = pool
    if settings.dev_file is not None:
        dev_source = settings.dev_file
        every_dev = read_squad_questions(settings.dev_file)
        dev_pool = ArticleParagraphs.of(every_dev)
        dev_questions = subsample_questions(every_dev, settings.max_dev_samples, settings.seed)

    started = time.perf_counter()
    train_lists = build_rerank_lists(
        train_questions,
        pool,
        settings.negatives,
        settings.seed,
        settings.train_file,
        settings.corpus_negatives,
    )
    train_set = encode_lists(tokenizer, train_lists, max_length)
    dev_set = None
    if dev_questions:
        dev_set = encode_lists(
            tokenizer,
            build_rerank_lists(
                dev_questions,
                dev_pool,
                settings.negatives,
                settings.seed,
                dev_source,
                settings.corpus_negatives,
            ),
            max_length,
        )
    list_size = settings.negatives + 1
    logger.info(
        "lists built",
        extra={
            "train_lists": len(train_set),
            "pairs": len(train_set.pairs),
            "dev_lists": 0 if dev_set is None else len(dev_set),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )

    if settings.mode == "distill":
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    else:
        # A base encoder gets a new one-logit head; the encoder is what we keep.
        teacher = AutoModelForSequenceClassification.from_pretrained(
            teacher_dir,
            num_labels=1,
            id2label={0: "relevance"},
            label2id={"relevance": 0},
            ignore_mismatched_sizes=True,
        )
        if not has_architecture(teacher_config, "ForSequenceClassification"):
            readout = attend_evenly_from_cls(teacher)
            logger.info("new cross-encoder head", extra={"last_layer_queries_zeroed": readout})
    teacher_layers = num_layers(teacher.config)
    teacher_dev: np.ndarray | None = None
    teacher_dev_metrics: dict[str, float] | None = None
    objective: Objective
    if settings.mode == "distill":
        layers = student_layers(settings, teacher_layers)
        weights = distill_weights(settings)
        teacher.to(device).eval()
        train_scores = list_scores(
            teacher_logits(teacher, teacher_dir, train_set.pairs, settings, pad_token_id, device, "train"),
            list_size,
        )
        if dev_set is not None:
            teacher_dev = list_scores(
                teacher_logits(teacher, teacher_dir, dev_set.pairs, settings, pad_token_id, device, "dev"),
                list_size,
            )
            teacher_dev_metrics = list_metrics(teacher_dev)
        model = build_student(teacher, layers)
        objective = RerankDistillObjective(
            torch.as_tensor(train_scores, device=device),
            weights,
            list_size,
            teacher if weights.cosine > 0 else None,
        )
        if weights.cosine == 0:
            del teacher  # its scores are all the loss needs; free the memory
    else:
        model, layers = finetuned_model(settings, teacher, teacher_layers)
        objective = RerankFinetuneObjective(list_size, settings.rerank_loss)

    def dev_record(current: Any, step: int, epoch: float) -> EvalRecord:
        assert dev_set is not None
        began = time.perf_counter()
        logits = predict_logits(
            current, dev_set.pairs, pad_token_id=pad_token_id, device=device, batch_size=64, bf16=bf16
        )
        metrics = list_metrics(list_scores(logits, list_size), teacher_dev)
        return EvalRecord(
            step,
            epoch,
            metrics["accuracy"],
            metrics.get("agreement"),
            time.perf_counter() - began,
            metrics={"mrr": metrics["mrr"]},
        )

    record: dict[str, Any] = {
        "task": "rerank",
        **model_record(settings, teacher_layers, layers, model),
        "train": {
            "file": str(settings.train_file),
            "questions_in_file": len(all_questions),
            "paragraphs_in_file": pool.count,
            "excluded_ids": len(excluded),
            "lists": len(train_set),
            "list_size": list_size,
            "negatives": "bm25 (bm25s, English stop words): the best of all paragraphs (corpus), "
            "then other paragraphs of the same article",
            "corpus_negatives": settings.corpus_negatives,
            "negatives_from_other_articles": sum(
                settings.negatives - entry.article_negatives for entry in train_lists
            ),
            "pairs": len(train_set.pairs),
            "tokens": train_set.num_tokens,
            "max_length": max_length,
            "loss": settings.rerank_loss if settings.mode == "finetune" else "distill",
        },
        "dev": None
        if dev_set is None
        else {
            "file": str(dev_source),
            "held_out_from_train": settings.validation_rows is not None,
            "lists": len(dev_set),
            "teacher": teacher_dev_metrics,
        },
        **environment_record(settings, device),
    }
    logger.info(
        "training",
        extra={
            "task": "rerank",
            "mode": settings.mode,
            "layers": layers,
            "parameters": record["parameters"],
            "train_lists": len(train_set),
            "device": str(device),
            "precision": settings.precision,
            "teacher_dev": teacher_dev_metrics,
        },
    )
    return fit(
        Job(
            settings=settings,
            model=model,
            tokenizer=tokenizer,
            train_set=train_set,
            objective=objective,
            record=record,
            device=device,
            pad_token_id=pad_token_id,
            default_metric="mrr",
            started=start.started,
            evaluator=dev_record if dev_set is not None else None,
        )
    )
