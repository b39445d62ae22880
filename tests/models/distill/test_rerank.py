"""Rerank in ``distilserve distill``: lists of SQuAD paragraphs, the losses, tiny runs end to end."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distilserve.models.distill.cli import Settings, run
from distilserve.models.distill.data import DataError
from distilserve.models.distill.losses import DistillWeights, listwise_softmax_ce, pointwise_bce
from distilserve.models.distill.rerank import (
    ArticleParagraphs,
    RerankFinetuneObjective,
    build_rerank_lists,
    encode_lists,
    list_metrics,
)
from distilserve.models.distill.run import TRAINING_RECORD, state_dir
from distilserve.models.distill.squad import SquadQuestion, read_squad_questions
from distilserve.models.distill.student import build_student
from distilserve.models.distill.trainer import RerankDistillObjective, TrainOptions, predict_logits, train
from tests.models.distill.tiny_runs import tiny_settings
from tests.tiny_models import ADJECTIVES, SUBJECTS, VERBS, Arch, TinyTask

Checkpoints = dict[tuple[Arch, TinyTask], Path]


def toy_rerank_squad(path: Path, articles: int, seed: int, paragraphs: int = 3) -> Path:
    """A SQuAD file whose articles' paragraphs each speak of their own subjects, so that the
    paragraph answering "how was <subject>?" is the one sentence naming the subject."""
    rng = random.Random(seed)
    data = []
    for article in range(articles):
        subjects = rng.sample(SUBJECTS, 4 * paragraphs)
        items = []
        for index in range(paragraphs):
            parts, qas, offset = [], [], 0
            for subject in subjects[4 * index : 4 * index + 4]:
                prefix = f"{subject.capitalize()} {rng.choice(VERBS)} "
                adjective = rng.choice(ADJECTIVES)
                sentence = f"{prefix}{adjective}."
                qas.append(
                    {
                        "id": f"toy-{seed}-{article}-{index}-{len(qas)}",
                        "question": f"how was {subject}?",
                        "answers": [{"text": adjective, "answer_start": offset + len(prefix)}],
                    }
                )
                parts.append(sentence)
                offset += len(sentence) + 1
            items.append({"context": " ".join(parts), "qas": qas})
        data.append({"title": f"Toy {article}", "paragraphs": items})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def question(qid: str, article: str, text: str, context: str) -> SquadQuestion:
    return SquadQuestion(qid, article, text, context, ((context.split()[0], 0),))


ARTICLE = [
    "Paris is the capital of France and its largest city.",
    "The Eiffel Tower in Paris was finished in 1889 for a fair.",
    "Wine is made in Bordeaux from grapes grown nearby.",
    "The Loire valley holds many castles of the old kings.",
]


def test_lists_put_the_answer_paragraph_first_and_bm25_negatives_after() -> None:
    questions = [question("q1", "France", "When was the Eiffel Tower in Paris finished?", ARTICLE[1])]
    pool = ArticleParagraphs({"France": ARTICLE, "Other": ["Unrelated text about the sea."]})
    (entry,) = build_rerank_lists(questions, pool, negatives=2, seed=0, source=Path("x.json"))
    assert entry.passages[0] == ARTICLE[1]
    # The other paragraph naming Paris outranks the ones that share no word with the question.
    assert entry.passages[1] == ARTICLE[0]
    assert len(set(entry.passages)) == 3 and set(entry.passages) <= set(ARTICLE)
    assert entry.article_negatives == 2


def test_small_articles_are_filled_from_other_articles_never_with_the_positive() -> None:
    small = ["Cats chase mice.", "Cats chase mice."]  # a duplicate of the positive: not a negative
    others = [f"Paragraph number {index} about boats." for index in range(5)]
    pool = ArticleParagraphs({"Cats": small, "Boats": others})
    questions = [question("q", "Cats", "What do cats chase?", small[0])]
    (entry,) = build_rerank_lists(questions, pool, negatives=3, seed=0, source=Path("x.json"))
    assert entry.passages[0] == small[0] and small[0] not in entry.passages[1:]
    assert entry.article_negatives == 0 and set(entry.passages[1:]) <= set(others)
    assert len(set(entry.passages[1:])) == 3


def test_corpus_negatives_come_first_from_every_article_and_the_rest_from_the_questions_own() -> None:
    # The best BM25 hit of the whole pool for this question is in another article ("Tower").
    towers = [
        "The Eiffel Tower in Paris was finished in 1889, a tower of iron for a fair.",
        "Bridges of stone.",
    ]
    pool = ArticleParagraphs({"France": ARTICLE, "Tower": towers})
    questions = [question("q1", "France", "When was the Eiffel Tower in Paris finished?", ARTICLE[1])]
    (entry,) = build_rerank_lists(
        questions, pool, negatives=3, seed=0, source=Path("x.json"), corpus_negatives=1
    )
    assert entry.passages[0] == ARTICLE[1]
    assert entry.passages[1] == towers[0]
    # The other two are the article's best, never the positive again, no passage twice.
    assert entry.passages[2] == ARTICLE[0] and set(entry.passages[2:]) <= set(ARTICLE) - {ARTICLE[1]}
    assert len(set(entry.passages)) == 4
    assert entry.article_negatives == 2
    # Corpus negatives that land in the question's own article count as article negatives.
    (inside,) = build_rerank_lists(
        questions, pool, negatives=3, seed=0, source=Path("x.json"), corpus_negatives=3
    )
    assert inside.passages[1] == towers[0] and ARTICLE[1] not in inside.passages[1:]
    assert inside.article_negatives == sum(passage in ARTICLE for passage in inside.passages[1:])
    with pytest.raises(ValueError, match="between 0 and the 3 negatives"):
        build_rerank_lists(questions, pool, negatives=3, seed=0, source=Path("x.json"), corpus_negatives=4)


def test_bad_rerank_data_is_refused_with_the_reason(tmp_path: Path) -> None:
    pool = ArticleParagraphs({"France": ARTICLE[:2]})
    with pytest.raises(DataError, match="at least 4"):
        build_rerank_lists(
            [question("q", "France", "Where?", ARTICLE[0])], pool, negatives=3, seed=0, source=tmp_path
        )
    with pytest.raises(DataError, match="'q' has no text"):
        build_rerank_lists([question("q", "France", "  ", ARTICLE[0])], pool, 1, 0, tmp_path)
    with pytest.raises(DataError, match="not in its article"):
        build_rerank_lists([question("q", "France", "Where?", "elsewhere")], pool, 1, 0, tmp_path)


def test_the_listwise_loss_is_the_softmax_cross_entropy_of_the_positive() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    expected = [-(2.0 - math.log(math.exp(2) + math.exp(1) + 1)), -(0.0 - math.log(2 + math.exp(3)))]
    assert float(listwise_softmax_ce(scores)) == pytest.approx(sum(expected) / 2, rel=1e-6)
    # A list is invariant to a shift of all its scores; per-pair BCE is not.
    assert float(listwise_softmax_ce(scores + 5)) == pytest.approx(
        float(listwise_softmax_ce(scores)), rel=1e-6
    )
    assert float(pointwise_bce(scores + 5)) != pytest.approx(float(pointwise_bce(scores)))
    bce = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 - 1 / (1 + math.exp(-1.0))) + math.log(0.5)) / 3
    assert float(pointwise_bce(scores[:1])) == pytest.approx(bce, rel=1e-6)


def test_list_metrics_rank_ties_against_the_positive() -> None:
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    metrics = list_metrics(scores, teacher_scores=np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["agreement"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def rerank_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rerank-toy")
    return {
        "train": toy_rerank_squad(folder / "train.json", articles=2, seed=1),
        "dev": toy_rerank_squad(folder / "dev.json", articles=1, seed=2),
    }


def rerank_settings(folder: Path, teacher: Path, files: dict[str, Path], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "task": "rerank",
        "negatives": 2,
        "max_length": 32,
        "batch_size": 8,
        "lr": 1e-4,
        "epochs": 2,
        "freeze_embeddings": True,
    }
    return tiny_settings(folder, teacher, dict(files), **(values | overrides))


@pytest.fixture(scope="module")
def minilm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's first two layers (the real weights): a random tiny model does not fit
    even its training lists in a test's few steps; a pretrained encoder does."""
    from transformers import AutoModel, AutoTokenizer

    from distilserve.models.export.default_model import minilm_source

    folder = tmp_path_factory.mktemp("minilm-2")
    source = minilm_source()[0]
    AutoModel.from_pretrained(source, num_hidden_layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rerank_runs(
    minilm_base: Path, rerank_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A cross-encoder fine-tuned from two MiniLM layers, then distilled into one layer."""
    folder = tmp_path_factory.mktemp("rerank-runs")
    teacher = rerank_settings(folder, minilm_base, rerank_files, mode="finetune", output=folder / "teacher")
    assert run(teacher) == 0
    # The student's lists take one of their two negatives from the whole file (--corpus-negatives).
    student = rerank_settings(
        folder,
        teacher.output,
        rerank_files,
        student_layers=[1],
        corpus_negatives=1,
        output=folder / "student",
    )
    assert run(student) == 0
    return {"base": minilm_base, "teacher": teacher.output, "student": student.output, "settings": student}


def test_the_listwise_objective_fits_the_lists_it_trains_on(
    minilm_base: Path, rerank_files: dict[str, Path]
) -> None:
    """The loop with the rerank rows and objective: the training lists' loss falls well below
    log(3), the loss of scores that do not depend on the passage."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distilserve.models.distill.rerank import attend_evenly_from_cls

    tokenizer = AutoTokenizer.from_pretrained(minilm_base)
    questions = read_squad_questions(rerank_files["train"])
    # Four questions, one of each of the first paragraphs' subjects; negatives from the whole file.
    lists = build_rerank_lists(
        questions[::4][:4], ArticleParagraphs.of(questions), 2, 0, rerank_files["train"]
    )
    data = encode_lists(tokenizer, lists, 32)
    torch.manual_seed(0)
    # No dropout: a few steps on four lists are a fitting test, not a training recipe.
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_base, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    assert attend_evenly_from_cls(model)
    indices = list(range(len(data)))
    batch = data.collate(indices, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["input_ids"].shape[0] == 4 * data.list_size  # every pair of every list, in one batch

    def loss() -> float:
        with torch.no_grad():
            return float(RerankFinetuneObjective(data.list_size)(model.eval(), batch, indices)[0])

    before = loss()
    options = TrainOptions(
        epochs=30, batch_size=4, learning_rate=3e-4, warmup_ratio=0.0, seed=0, progress=False
    )
    train(
        model,
        data,
        RerankFinetuneObjective(data.list_size),
        options,
        pad_token_id=0,
        device=torch.device("cpu"),
    )
    after = loss()
    assert before == pytest.approx(math.log(3), abs=0.01)
    assert after < 0.5 * before, (before, after)


def test_a_rerank_run_records_its_lists_and_scores(rerank_runs: dict[str, Any]) -> None:
    record = json.loads((rerank_runs["teacher"] / TRAINING_RECORD).read_text())
    assert record["task"] == "rerank" and record["train"]["list_size"] == 3
    assert record["train"]["lists"] == 24 and record["dev"]["lists"] == 12
    assert all("mrr" in entry["metrics"] for entry in record["result"]["evaluations"])
    config = json.loads((rerank_runs["teacher"] / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1


def test_the_students_record_says_where_its_negatives_come_from(rerank_runs: dict[str, Any]) -> None:
    train = json.loads((rerank_runs["student"] / TRAINING_RECORD).read_text())["train"]
    assert train["corpus_negatives"] == 1 and train["list_size"] == 3
    assert "the best of all paragraphs (corpus)" in train["negatives"]


def test_more_corpus_negatives_than_negatives_are_refused(
    minilm_base: Path, rerank_files: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    settings = rerank_settings(tmp_path, minilm_base, rerank_files, mode="finetune", corpus_negatives=3)
    assert run(settings) == 2
    assert "--corpus-negatives 3 is more than the list's --negatives 2" in capsys.readouterr().err


def test_distilling_a_cross_encoder_follows_the_teacher(rerank_runs: dict[str, Any]) -> None:
    record = json.loads((rerank_runs["student"] / TRAINING_RECORD).read_text())
    assert record["mode"] == "distill" and record["student_layers"] == [1]
    assert record["dev"]["teacher"]["mrr"] > 0
    evaluations = record["result"]["evaluations"]
    # Agreement with the teacher's top passage, measured on every dev evaluation.
    assert all(entry["agreement"] is not None for entry in evaluations)
    assert record["best"]["agreement"] >= evaluations[0]["agreement"]
    assert not state_dir(rerank_runs["settings"]).exists()


def test_the_distill_objective_scores_lists_and_adds_the_cosine_of_last_hidden_states(
    rerank_runs: dict[str, Any], rerank_files: dict[str, Path]
) -> None:
    """KL and listwise CE on each list's scores, the positive the label; with a cosine weight the
    teacher runs on the batch: a student of all the teacher's layers matches it (KL and cosine 0),
    a one-layer student does not."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(rerank_runs["teacher"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(rerank_runs["teacher"])
    questions = read_squad_questions(rerank_files["train"])
    data = encode_lists(
        tokenizer,
        build_rerank_lists(questions[:6], ArticleParagraphs.of(questions), 2, 0, rerank_files["train"]),
        32,
    )
    indices = [4, 1, 3]
    batch = data.collate(indices, tokenizer.pad_token_id, torch.device("cpu"))
    scores = torch.as_tensor(
        predict_logits(teacher, data.pairs, pad_token_id=tokenizer.pad_token_id, device=torch.device("cpu"))
    ).reshape(-1, data.list_size)
    weights = DistillWeights(temperature=2.0, alpha=0.5, beta=0.5, cosine=1.0)
    objective = RerankDistillObjective(scores, weights, data.list_size, teacher)

    with torch.no_grad():
        total, same = objective(build_student(teacher, [0, 1]).eval(), batch, indices)
        _, one_layer = objective(build_student(teacher, [1]).eval(), batch, indices)
    assert same["kd"] == pytest.approx(0.0, abs=1e-5) and same["cos"] == pytest.approx(0.0, abs=1e-5)
    assert same["ce"] == pytest.approx(float(listwise_softmax_ce(scores[indices])), rel=1e-4)
    assert float(total) == pytest.approx(0.5 * same["ce"], rel=1e-3)
    assert one_layer["cos"] > 0.01


def test_a_student_needs_a_one_logit_teacher(
    tiny_checkpoints: Checkpoints, rerank_files: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    settings = rerank_settings(tmp_path, tiny_checkpoints[("bert", "text-classification")], rerank_files)
    # The teacher check comes before any training.
    assert run(settings) == 2
    assert "not a one-logit cross-encoder" in capsys.readouterr().err
    missing = rerank_settings(
        tmp_path,
        tiny_checkpoints[("bert", "feature-extraction")],
        {"train": tmp_path / "none.json", "dev": None},
    )
    assert run(missing.model_copy(update={"mode": "finetune"})) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_interrupted_rerank_run_resumes_to_the_same_weights(
    tiny_checkpoints: Checkpoints, rerank_files: dict[str, Path], tmp_path: Path
) -> None:
    """Killed after a saved state, then resumed: the weights equal an uninterrupted run's."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tiny_checkpoints[("bert", "feature-extraction")]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = read_squad_questions(rerank_files["train"])
    lists = build_rerank_lists(questions, ArticleParagraphs.of(questions), 2, 0, rerank_files["train"])
    data = encode_lists(tokenizer, lists, 32)

    class Interrupted(Exception):
        pass

    class StopAfter(RerankFinetuneObjective):
        def __init__(self, calls: int) -> None:
            super().__init__(data.list_size)
            self.calls = calls

        def __call__(self, model: Any, batch: Any, indices: list[int]) -> Any:
            self.calls -= 1
            if self.calls < 0:
                raise Interrupted
            return super().__call__(model, batch, indices)

    def fresh_run(objective: Any, **options: Any) -> Any:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
        settings = TrainOptions(epochs=2, batch_size=4, learning_rate=1e-3, seed=0, progress=False, **options)
        train(model, data, objective, settings, pad_token_id=0, device=torch.device("cpu"))
        return model

    expected = fresh_run(RerankFinetuneObjective(data.list_size))
    checkpoint = {"checkpoint_dir": tmp_path / "state", "checkpoint_every": 2}
    with pytest.raises(Interrupted):
        fresh_run(StopAfter(6 + 3), **checkpoint)  # 6 steps an epoch: stopped in the second
    resumed = fresh_run(RerankFinetuneObjective(data.list_size), resume=True, **checkpoint)
    for (name, want), got in zip(expected.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(want, got, atol=1e-6), name
    # The loop's rows are lists: each batch holds every pair of its lists, positive first.
    logits = predict_logits(resumed, data.pairs, pad_token_id=0, device=torch.device("cpu"))
    assert logits.shape == (len(data) * 3, 1)
