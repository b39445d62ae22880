"""Question answering in ``distilserve distill``: SQuAD features, bad files, tiny runs end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distilserve.models.distill.cli import Settings, run
from distilserve.models.distill.data import DataError, collate
from distilserve.models.distill.run import TRAINING_RECORD, state_dir
from distilserve.models.distill.squad import (
    SquadQuestion,
    best_answers,
    question_answering_features,
    read_id_list,
    read_squad_questions,
)
from distilserve.models.distill.trainer import (
    QuestionAnsweringFinetuneObjective,
    TrainOptions,
    predict_logits,
    span_logits,
    train,
)
from tests.models.distill.tiny_runs import tiny_settings
from tests.tiny_models import ADJECTIVES, SUBJECTS, TAILS, VERBS, Arch, TinyTask

Checkpoints = dict[tuple[Arch, TinyTask], Path]


def toy_paragraph(rng: random.Random, sentences: int) -> tuple[str, list[tuple[str, str, int]]]:
    """A context of corpus-style sentences, and (question, answer, answer start) for each one."""
    subjects = rng.sample(SUBJECTS, sentences)
    parts: list[str] = []
    qas: list[tuple[str, str, int]] = []
    offset = 0
    for subject in subjects:
        adjective = rng.choice(ADJECTIVES)
        prefix = f"{subject.capitalize()} {rng.choice(VERBS)} "
        sentence = prefix + adjective + (" " + rng.choice(TAILS) if rng.random() < 0.5 else "") + "."
        qas.append((f"how was {subject}?", adjective, offset + len(prefix)))
        parts.append(sentence)
        offset += len(sentence) + 1
    return " ".join(parts), qas


def toy_squad(path: Path, paragraphs: int, seed: int, sentences: int = 4) -> Path:
    """A SQuAD v1.1 file of toy questions: "how was the film?" -> the adjective said of it."""
    rng = random.Random(seed)
    items = []
    for index in range(paragraphs):
        context, qas = toy_paragraph(rng, sentences)
        items.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"toy-{seed}-{index}-{number}",
                        "question": question,
                        "answers": [{"text": answer, "answer_start": start}],
                    }
                    for number, (question, answer, start) in enumerate(qas)
                ],
            }
        )
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "Toy", "paragraphs": items}]}))
    return path


def reference_train_features(
    tokenizer: Any, examples: dict[str, list[Any]], max_length: int, stride: int
) -> Any:
    """``prepare_train_features`` of transformers' examples/pytorch/question-answering/run_qa.py,
    as it stands there (question first: ``pad_on_right``), for the comparison."""
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized_examples = tokenizer(
        examples["question"],
        examples["context"],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    sample_mapping = tokenized_examples.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized_examples.pop("offset_mapping")
    tokenized_examples["start_positions"] = []
    tokenized_examples["end_positions"] = []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized_examples["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized_examples.sequence_ids(i)
        sample_index = sample_mapping[i]
        answers = examples["answers"][sample_index]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            tokenized_examples["start_positions"].append(cls_index)
            tokenized_examples["end_positions"].append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            tokenized_examples["start_positions"].append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            tokenized_examples["end_positions"].append(token_end_index + 1)
    return tokenized_examples, sample_mapping


def test_features_equal_the_transformers_reference(tiny_checkpoints: Checkpoints, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tiny_checkpoints[("bert", "question-answering")]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = read_squad_questions(toy_squad(tmp_path / "toy.json", paragraphs=6, seed=3, sentences=8))
    # Short windows, so that long contexts are cut and answers land in later windows.
    max_length, stride = 40, 12
    features = question_answering_features(tokenizer, questions, max_length, stride)
    reference, mapping = reference_train_features(
        tokenizer,
        {
            "question": [q.question for q in questions],
            "context": [q.context for q in questions],
            "answers": [{"text": [q.answers[0][0]], "answer_start": [q.answers[0][1]]} for q in questions],
        },
        max_length,
        stride,
    )
    assert features.input_ids == reference["input_ids"]
    assert features.token_type_ids == reference["token_type_ids"]
    assert features.question_index == list(mapping)
    assert features.start_positions == reference["start_positions"]
    assert features.end_positions == reference["end_positions"]

    # The case the windows exist for: an answer that is not in the question's first window
    # (labelled CLS, index 0, there) but in a later one.
    first_window: dict[int, int] = {}
    for window, question in enumerate(features.question_index):
        first_window.setdefault(question, window)
    assert any(
        window > first_window[question]
        and features.start_positions[window] != 0
        and features.start_positions[first_window[question]] == 0
        for window, question in enumerate(features.question_index)
    )
    # Every labelled span decodes back to its answer text, but for the reference's one quirk
    # (kept, since equality is the contract): an answer that is the last context token of its
    # window gets the start label of the [SEP] after it.
    for window, question_index in enumerate(features.question_index):
        start, end = features.start_positions[window], features.end_positions[window]
        if start == 0:
            continue
        offsets = features.context_offsets[window]
        question = questions[question_index]
        span_end = offsets[end]
        assert span_end is not None
        if offsets[start] is None:
            assert start == end + 1 == len(offsets) - 1
            assert (
                question.context[span_end[1] - len(question.answers[0][0]) : span_end[1]]
                == question.answers[0][0]
            )
            continue
        span_start = offsets[start]
        assert span_start is not None
        assert question.context[span_start[0] : span_end[1]] == question.answers[0][0]


def test_decoding_picks_the_best_span_over_windows(tiny_checkpoints: Checkpoints) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints[("bert", "question-answering")])
    context = "The film was wonderful. The plot was slow."
    question = SquadQuestion("q", "Toy", "how was the plot?", context, (("slow", context.index("slow")),))
    features = question_answering_features(tokenizer, [question], 64, 16)
    width = len(features.input_ids[0])
    start = np.full((1, width), -5.0)
    end = np.full((1, width), -5.0)
    start[0, features.start_positions[0]] = 5.0
    end[0, features.end_positions[0]] = 5.0
    start[0, 0] = end[0, 0] = 50.0  # CLS is never an answer span
    assert best_answers(features, start, end) == ["slow"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw["data"][0]["paragraphs"][0]["qas"][1].pop("question"), "missing field 'question'"),
        (lambda raw: raw["data"][0]["paragraphs"][0].pop("context"), "missing field 'context'"),
        (
            lambda raw: raw["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=1),
            "is not at answer_start 1",
        ),
        (
            lambda raw: raw["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="3"),
            "'answer_start' is str, expected int",
        ),
        (lambda raw: raw.pop("data"), "missing field 'data'"),
    ],
)
def test_malformed_squad_files_name_the_article_and_question(
    tmp_path: Path, mutate: Any, message: str
) -> None:
    path = toy_squad(tmp_path / "train.json", paragraphs=2, seed=0)
    raw = json.loads(path.read_text())
    mutate(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as error:
        read_squad_questions(path)
    text = str(error.value)
    assert message in text and str(path) in text
    if "data" in raw and "context" in raw["data"][0]["paragraphs"][0]:
        assert "article 0 ('Toy')" in text and "'toy-0-0-1'" in text


def test_invalid_json_and_excluded_ids(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [')
    with pytest.raises(DataError, match="invalid JSON"):
        read_squad_questions(broken)
    path = toy_squad(tmp_path / "train.json", paragraphs=2, seed=0)
    ids = tmp_path / "ids.txt"
    ids.write_text("# inferred starts\ntoy-0-0-1\n\ntoy-0-1-3\n")
    excluded = read_id_list(ids)
    kept = read_squad_questions(path, exclude_ids=excluded)
    assert len(kept) == 8 - 2 and not excluded & {question.id for question in kept}


def qa_settings(tmp_path: Path, teacher: Path, files: dict[str, Path], **overrides: Any) -> Settings:
    """A tiny reader run: short windows, so that the toy contexts are cut into several."""
    values: dict[str, Any] = {
        "task": "question-answering",
        "output": tmp_path / "reader",
        "max_length": 64,
        "doc_stride": 16,
        "epochs": 3,
    }
    return tiny_settings(tmp_path, teacher, dict(files), **(values | overrides))


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("squad-toy")
    return {
        "train": toy_squad(folder / "train.json", paragraphs=60, seed=1),
        "dev": toy_squad(folder / "dev.json", paragraphs=10, seed=2),
    }


def span_loss(folder: Path, files: dict[str, Path]) -> float:
    """The mean start/end cross-entropy of a checkpoint on the toy training questions."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    features = question_answering_features(tokenizer, read_squad_questions(files["train"]), 64, 16)
    batch = collate(features, list(range(len(features))), tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        loss, _ = QuestionAnsweringFinetuneObjective()(model, batch, list(range(len(features))))
    return float(loss)


@pytest.fixture(scope="module")
def qa_runs(
    tiny_checkpoints: Checkpoints, qa_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A tiny reader fine-tuned from the 2-layer BERT, then distilled into one layer."""
    folder = tmp_path_factory.mktemp("qa-runs")
    base = tiny_checkpoints[("bert", "question-answering")]
    teacher = qa_settings(folder, base, qa_files, mode="finetune", output=folder / "teacher", epochs=6)
    assert run(teacher) == 0
    student = qa_settings(
        folder, teacher.output, qa_files, student_layers=[1], output=folder / "student", epochs=6
    )
    assert run(student) == 0
    return {"base": base, "teacher": teacher.output, "student": student.output, "settings": student}


def test_finetuning_a_reader_lowers_the_span_loss(qa_runs: dict[str, Any], qa_files: dict[str, Path]) -> None:
    before = span_loss(qa_runs["base"], qa_files)
    after = span_loss(qa_runs["teacher"], qa_files)
    assert after < 0.7 * before, (before, after)
    record = json.loads((qa_runs["teacher"] / TRAINING_RECORD).read_text())
    assert record["task"] == "question-answering" and record["mode"] == "finetune"
    assert record["best"]["metrics"]["f1"] > record["result"]["evaluations"][0]["metrics"]["f1"]


def test_distilling_a_reader_matches_the_teacher(qa_runs: dict[str, Any], qa_files: dict[str, Path]) -> None:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from distilserve.models.distill.losses import soft_target_kl, span_rows
    from distilserve.models.distill.student import build_student

    tokenizer = AutoTokenizer.from_pretrained(qa_runs["teacher"])
    features = question_answering_features(tokenizer, read_squad_questions(qa_files["dev"]), 64, 16)

    def logits(model: Any) -> torch.Tensor:
        out = predict_logits(
            model, features, pad_token_id=0, device=torch.device("cpu"), logits_of=span_logits
        )
        return torch.from_numpy(out).reshape(-1, out.shape[-1])

    teacher = AutoModelForQuestionAnswering.from_pretrained(qa_runs["teacher"]).eval()
    target = logits(teacher)
    before = float(soft_target_kl(logits(build_student(teacher, [1]).eval()), target, 2.0))
    student = AutoModelForQuestionAnswering.from_pretrained(qa_runs["student"]).eval()
    after = float(soft_target_kl(logits(student), target, 2.0))
    assert after < 0.5 * before, (before, after)
    record = json.loads((qa_runs["student"] / TRAINING_RECORD).read_text())
    assert record["student_layers"] == [1] and record["dev"]["teacher"]["f1"] > 0
    assert student.config.num_hidden_layers == 1
    assert span_rows(torch.tensor([1, 2]), torch.tensor([3, 4])).tolist() == [1, 3, 2, 4]


def test_distilled_reader_exports_and_serves_answers(qa_runs: dict[str, Any], tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from distilserve.models import load_model
    from distilserve.models.export import ExportOptions, export_bundle
    from distilserve.models.tasks import QAInput
    from distilserve.server.app import build_app
    from distilserve.server.settings import ServerSettings

    bundle = tmp_path / "bundle"
    manifest = export_bundle(
        ExportOptions(
            source=str(qa_runs["student"]), output=bundle, task="question-answering", quantize="none"
        )
    )
    assert manifest.task == "question-answering"
    context = "The film was brilliant from start to finish. Our hotel was awful despite the hype."
    library = load_model(bundle).predict([QAInput(question="how was our hotel?", context=context)])[0][0]
    settings = ServerSettings(model=[f"reader={bundle}"])
    with TestClient(build_app(settings, settings.model_specs)) as client:
        response = client.post(
            "/v1/answer", json={"inputs": {"question": "how was our hotel?", "context": context}}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    answer = body[0] if isinstance(body, list) else body
    assert answer["answer"] == library.answer
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_an_interrupted_run_resumes_to_the_same_weights(
    tiny_checkpoints: Checkpoints, tmp_path: Path
) -> None:
    """Killed after a saved state, then resumed: the weights equal an uninterrupted run's."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    folder = tiny_checkpoints[("bert", "question-answering")]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    questions = read_squad_questions(toy_squad(tmp_path / "train.json", paragraphs=12, seed=5))
    features = question_answering_features(tokenizer, questions, 64, 16)

    class Interrupted(Exception):
        pass

    class StopAfter(QuestionAnsweringFinetuneObjective):
        def __init__(self, calls: int) -> None:
            self.calls = calls

        def __call__(self, model: Any, batch: Any, indices: list[int]) -> Any:
            self.calls -= 1
            if self.calls < 0:
                raise Interrupted
            return super().__call__(model, batch, indices)

    def fresh_run(objective: Any, **options: Any) -> Any:
        model = AutoModelForQuestionAnswering.from_pretrained(folder)
        settings = TrainOptions(epochs=2, batch_size=8, learning_rate=1e-3, seed=0, progress=False, **options)
        train(model, features, objective, settings, pad_token_id=0, device=torch.device("cpu"))
        return model

    expected = fresh_run(QuestionAnsweringFinetuneObjective())
    steps_per_epoch = -(-len(features) // 8)
    checkpoint = {"checkpoint_dir": tmp_path / "state", "checkpoint_every": 2}
    # Stopped in the second epoch, after a state saved there (every 2 steps).
    with pytest.raises(Interrupted):
        fresh_run(StopAfter(steps_per_epoch + 3), **checkpoint)
    resumed = fresh_run(QuestionAnsweringFinetuneObjective(), resume=True, **checkpoint)
    for (name, want), got in zip(expected.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(want, got, atol=1e-6), name


def test_a_finished_run_leaves_no_resumable_state(qa_runs: dict[str, Any]) -> None:
    assert not state_dir(qa_runs["settings"]).exists()
    assert (qa_runs["student"] / "model.safetensors").is_file()
