"""Fine-tuning and distillation end to end on tiny checkpoints and the toy sentiment corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distilserve.models.distill.augment import AugmentOptions, augment_texts
from distilserve.models.distill.cli import Settings, run
from distilserve.models.distill.data import DataError, encode, length_grouped_batches, read_examples
from distilserve.models.distill.losses import soft_target_kl
from distilserve.models.distill.run import TRAINING_RECORD
from distilserve.models.distill.student import build_student, default_student_layers, validate_layers
from distilserve.models.distill.trainer import predict_logits
from tests.models.distill.tiny_runs import tiny_settings
from tests.tiny_models import LABELS, Arch, TinyTask, corpus, toy_label

Checkpoints = dict[tuple[Arch, TinyTask], Path]

TRAIN_SIZE = 400
HELD_OUT_SIZE = 200


def write_tsv(path: Path, sentences: list[str]) -> Path:
    lines = ["sentence\tlabel"] + [f"{sentence}\t{toy_label(sentence)}" for sentence in sentences]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train on the corpus the tiny tokenizers were trained on; hold out sentences it lacks."""
    folder = tmp_path_factory.mktemp("toy-data")
    train = corpus(TRAIN_SIZE, seed=0)
    seen = set(train)
    held_out = [sentence for sentence in corpus(1000, seed=1) if sentence not in seen][:HELD_OUT_SIZE]
    return {
        "train": write_tsv(folder / "train.tsv", train),
        "dev": write_tsv(folder / "dev.tsv", held_out[:100]),
        "held_out": held_out,
    }


def classifier(folder: Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def logits_of(model: Any, folder: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = encode(tokenizer, texts, None, max_length=128)
    return predict_logits(model, data, pad_token_id=tokenizer.pad_token_id, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def distilled(
    tiny_checkpoints: Checkpoints, toy_files: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One distillation run: the 2-layer tiny BERT classifier into a 1-layer student."""
    tmp_path = tmp_path_factory.mktemp("distill")
    teacher = tiny_checkpoints[("bert", "text-classification")]
    # Kept by agreement: the tiny teacher is only 70% right on dev, so dev accuracy would
    # reward students that differ from it.
    settings = tiny_settings(tmp_path, teacher, toy_files, best_metric="agreement")
    assert run(settings) == 0
    return {"teacher": teacher, "student": settings.output, "settings": settings}


def test_distillation_lowers_the_loss(distilled: dict[str, Any], toy_files: dict[str, Any]) -> None:
    teacher = classifier(distilled["teacher"])
    texts = [line.split("\t")[0] for line in toy_files["train"].read_text().splitlines()[1:]]
    target = torch.from_numpy(logits_of(teacher, distilled["teacher"], texts))
    initial = build_student(teacher, [0]).eval()  # what the run started from
    trained = classifier(distilled["student"])
    before = float(
        soft_target_kl(torch.from_numpy(logits_of(initial, distilled["teacher"], texts)), target, 2.0)
    )
    after = float(
        soft_target_kl(torch.from_numpy(logits_of(trained, distilled["student"], texts)), target, 2.0)
    )
    assert after < 0.5 * before, (before, after)


def test_student_agrees_with_the_teacher_on_held_out_text(
    distilled: dict[str, Any], toy_files: dict[str, Any]
) -> None:
    texts = toy_files["held_out"]
    teacher_labels = logits_of(classifier(distilled["teacher"]), distilled["teacher"], texts).argmax(-1)
    student_labels = logits_of(classifier(distilled["student"]), distilled["student"], texts).argmax(-1)
    agreement = float(np.mean(teacher_labels == student_labels))
    # Better than always answering the teacher's most frequent label, and far above 1/3.
    majority = np.bincount(teacher_labels, minlength=len(LABELS)).max() / len(texts)
    assert agreement >= 0.8, agreement
    assert agreement > majority + 0.1, (agreement, majority)


def test_saved_checkpoint_is_a_complete_hugging_face_folder(distilled: dict[str, Any]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    student = distilled["student"]
    config = AutoConfig.from_pretrained(student)
    assert config.num_hidden_layers == 1
    assert config.id2label == LABELS
    assert config.label2id == {name: index for index, name in LABELS.items()}
    assert AutoTokenizer.from_pretrained(student)("the film was moving")["input_ids"]
    record = json.loads((student / TRAINING_RECORD).read_text())
    assert record["mode"] == "distill" and record["student_layers"] == [0]
    assert record["best"]["agreement"] is not None
    steps = [evaluation["step"] for evaluation in record["result"]["evaluations"]]
    assert steps == [0, 25, 50, 75, 100, 125, 150]  # before training, then after each epoch


def test_teacher_logits_are_computed_once(
    distilled: dict[str, Any], toy_files: dict[str, Any], tmp_path: Path
) -> None:
    cache = distilled["settings"].cache_dir
    files = sorted(cache.glob("teacher-logits-*.npy"))
    assert len(files) == 2  # train and dev
    stamps = [path.stat().st_mtime_ns for path in files]
    settings = tiny_settings(tmp_path, distilled["teacher"], toy_files, epochs=1, cache_dir=cache)
    assert run(settings) == 0
    assert sorted(cache.glob("teacher-logits-*.npy")) == files
    assert [path.stat().st_mtime_ns for path in files] == stamps


def test_distilled_checkpoint_exports_and_matches(
    distilled: dict[str, Any], toy_files: dict[str, Any], tmp_path: Path
) -> None:
    from distilserve.models import load_model
    from distilserve.models.export import ExportOptions, export_bundle

    bundle = tmp_path / "bundle"
    manifest = export_bundle(ExportOptions(source=str(distilled["student"]), output=bundle))
    assert manifest.task == "text-classification"
    assert manifest.labels == LABELS
    texts = toy_files["held_out"]
    served = [scores[0].index for scores in load_model(bundle).predict(texts)]
    student = logits_of(classifier(distilled["student"]), distilled["student"], texts).argmax(-1)
    assert np.mean(np.asarray(served) == student) >= 0.9

    # And the exported student serves over HTTP, with the same answers as the library.
    from starlette.testclient import TestClient

    from distilserve.server.app import build_app
    from distilserve.server.settings import ServerSettings

    settings = ServerSettings(model=[f"student={bundle}"])
    with TestClient(build_app(settings, settings.model_specs)) as client:
        response = client.post("/v1/classify", json={"input": texts[:8]})
    assert response.status_code == 200, response.text
    assert [item["label"] for item in response.json()["data"]] == [LABELS[index] for index in served[:8]]


def test_finetune_mode_makes_a_classifier(
    tiny_checkpoints: Checkpoints, toy_files: dict[str, Any], tmp_path: Path
) -> None:
    base = tiny_checkpoints[("distilbert", "feature-extraction")]
    settings = tiny_settings(
        tmp_path, base, toy_files, mode="finetune", labels=list(LABELS.values()), epochs=8
    )
    assert run(settings) == 0
    record = json.loads((settings.output / TRAINING_RECORD).read_text())
    initial = record["result"]["evaluations"][0]["accuracy"]
    assert record["student_layers"] == [0, 1]
    assert record["best"]["accuracy"] >= 0.7 > initial + 0.1, (initial, record["best"])
    assert classifier(settings.output).config.id2label == LABELS


def test_distill_refuses_a_teacher_without_a_classifier(
    tiny_checkpoints: Checkpoints, toy_files: dict[str, Any], tmp_path: Path
) -> None:
    base = tiny_checkpoints[("bert", "feature-extraction")]
    assert run(tiny_settings(tmp_path, base, toy_files)) == 2
    assert not (tmp_path / "student").exists()


def test_existing_output_needs_overwrite(
    tiny_checkpoints: Checkpoints, toy_files: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "keep.txt").write_text("x")
    teacher = tiny_checkpoints[("bert", "text-classification")]
    assert run(tiny_settings(tmp_path, teacher, toy_files)) == 2
    assert (tmp_path / "student" / "keep.txt").exists()


def test_distill_from_unlabelled_text_with_the_cosine_loss(
    tiny_checkpoints: Checkpoints, toy_files: dict[str, Any], tmp_path: Path
) -> None:
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("\n".join(json.dumps({"text": text}) for text in corpus(200, seed=2)) + "\n")
    teacher = tiny_checkpoints[("distilbert", "text-classification")]
    soft_only = tiny_settings(
        tmp_path, teacher, toy_files, train_file=unlabelled, beta=0.0, alpha=1.0, cosine_weight=1.0, epochs=1
    )
    assert run(soft_only) == 0
    record = json.loads((soft_only.output / TRAINING_RECORD).read_text())
    assert record["student_layers"] == [0] and record["result"]["steps"] == 13
    # With beta > 0 the labels are needed: refused before any training.
    with_labels = tiny_settings(
        tmp_path, teacher, toy_files, train_file=unlabelled, output=tmp_path / "other"
    )
    assert run(with_labels) == 2
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_student_copies_the_chosen_layers(tiny_checkpoints: Checkpoints, arch: Arch) -> None:
    teacher = classifier(tiny_checkpoints[(arch, "text-classification")])
    student = build_student(teacher, [1])
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    stack = "bert.encoder.layer" if arch == "bert" else "distilbert.transformer.layer"
    layer_keys = [key for key in student_state if key.startswith(f"{stack}.0.")]
    assert layer_keys and not any(key.startswith(f"{stack}.1.") for key in student_state)
    for key in layer_keys:
        assert torch.equal(student_state[key], teacher_state[key.replace(f"{stack}.0.", f"{stack}.1.")])
    for key in student_state:
        if not key.startswith(stack):  # embeddings, pooler, classifier
            assert torch.equal(student_state[key], teacher_state[key]), key
    assert student.config.num_hidden_layers == 1
    assert teacher.config.num_hidden_layers == 2  # the teacher's config is not touched


def test_layer_choices() -> None:
    assert default_student_layers(6) == [0, 2, 4]
    assert default_student_layers(12) == [0, 2, 4, 6, 8, 10]
    assert validate_layers([1, 3], 4) == [1, 3]
    for bad in ([], [4], [2, 1], [1, 1]):
        with pytest.raises(ValueError):
            validate_layers(bad, 4)


def test_readers(tmp_path: Path) -> None:
    tsv = tmp_path / "a.tsv"
    tsv.write_text('sentence\tlabel\nit \'s "great" \t1\nbad\t0\n', encoding="utf-8")
    examples = read_examples(tsv)
    assert examples.texts == ['it \'s "great"', "bad"] and examples.labels == [1, 0]

    as_json = tmp_path / "a.json"
    as_json.write_text(
        json.dumps([{"text": "good", "label": "positive"}, {"text": "poor", "label": "negative"}])
    )
    assert read_examples(as_json).labels == ["positive", "negative"]

    lines = tmp_path / "a.jsonl"
    lines.write_text('{"review": "fine"}\n\n{"review": "dull"}\n')
    unlabelled = read_examples(lines)
    assert unlabelled.texts == ["fine", "dull"] and unlabelled.labels is None

    assert len(read_examples(tsv).subsample(1, seed=0)) == 1
    with pytest.raises(DataError, match=r"no column .body."):
        read_examples(tsv, text_column="body")
    bad = tmp_path / "b.tsv"
    bad.write_text("sentence\tlabel\na\tb\tc\n")
    with pytest.raises(DataError, match="line 2"):
        read_examples(bad)


def test_length_grouped_batches_cover_every_row_once() -> None:
    import random

    lengths = [random.Random(1).randint(3, 60) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 32, random.Random(0), group_batches=4)
    assert sorted(index for batch in batches for index in batch) == list(range(1000))
    assert all(len(batch) <= 32 for batch in batches)
    # Same seed, same order: runs are reproducible.
    assert batches == length_grouped_batches(lengths, 32, random.Random(0), group_batches=4)


def test_settings_fields_are_described_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name
    extra = Settings.model_fields["teacher"].json_schema_extra
    assert isinstance(extra, dict) and extra.get("cli_positional") is True
    monkeypatch.setenv("DISTILSERVE_DISTILL_STUDENT_LAYERS", "[1, 3]")
    settings = Settings(teacher=Path("t"), train_file=Path("a.tsv"), output=Path("o"))
    assert settings.student_layers == [1, 3]
    assert settings.mode == "distill"


def test_augmented_copies_are_new_seeded_and_bounded() -> None:
    texts = [
        f"the film was {word} and the cast was {other}"
        for word in ("good", "bad")
        for other in ("fine", "weak")
    ]
    options = AugmentOptions(copies=3, mask_token="[MASK]", mask_probability=0.3, seed=7)
    augmented = augment_texts(texts, options)
    assert augmented == augment_texts(texts, options)
    assert augmented != augment_texts(
        texts, AugmentOptions(copies=3, mask_token="[MASK]", mask_probability=0.3, seed=8)
    )
    assert 0 < len(augmented) <= 3 * len(texts)
    assert not set(augmented) & set(texts) and len(set(augmented)) == len(augmented)
    assert any("[MASK]" in text for text in augmented)
    # Spans: some copies are shorter than any original; every word comes from the corpus or is a mask.
    vocabulary = {word for text in texts for word in text.split()} | {"[MASK]"}
    assert min(len(text.split()) for text in augmented) < min(len(text.split()) for text in texts)
    assert all(set(text.split()) <= vocabulary for text in augmented)
    assert augment_texts(texts, AugmentOptions(copies=0, mask_token="[MASK]")) == []
    with pytest.raises(ValueError, match="mask_probability"):
        AugmentOptions(copies=1, mask_token="[MASK]", mask_probability=1.5)


def test_held_out_validation_rows_are_seeded_and_disjoint(toy_files: dict[str, Any]) -> None:
    examples = read_examples(toy_files["train"])
    rest, validation = examples.split(50, seed=3)
    assert len(validation) == 50 and len(rest) == len(examples) - 50
    assert sorted(rest.texts + validation.texts) == sorted(examples.texts)
    assert validation.texts == examples.split(50, seed=3)[1].texts != examples.split(50, seed=4)[1].texts
    with pytest.raises(DataError, match="cannot hold out"):
        examples.split(len(examples), seed=0)


def test_distilling_on_an_augmented_set_with_held_out_validation(
    distilled: dict[str, Any], toy_files: dict[str, Any], tmp_path: Path
) -> None:
    settings = tiny_settings(
        tmp_path,
        distilled["teacher"],
        toy_files,
        dev_file=None,
        validation_rows=60,
        augment_copies=2,
        epochs=1,
        best_metric="agreement",
    )
    assert run(settings) == 0
    record = json.loads((settings.output / TRAINING_RECORD).read_text())
    # The held-out rows are not trained on; every original row gains up to 2 teacher-labelled copies.
    originals = TRAIN_SIZE - 60
    assert record["dev"]["held_out_from_train"] is True and record["dev"]["rows"] == 60
    assert (
        originals < record["train"]["rows"] == originals + record["train"]["augmented_rows"] <= 3 * originals
    )
    assert record["best"] is not None and record["best"]["agreement"] is not None
    # Both ways of naming the evaluation set at once, or copies without a teacher, are refused.
    assert (
        run(
            tiny_settings(
                tmp_path, distilled["teacher"], toy_files, validation_rows=60, output=tmp_path / "a"
            )
        )
        == 2
    )
    finetune = tiny_settings(
        tmp_path, distilled["teacher"], toy_files, mode="finetune", augment_copies=1, output=tmp_path / "b"
    )
    assert run(finetune) == 2
