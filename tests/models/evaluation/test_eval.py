"""``distilserve eval``: metric functions against hand-computed values, the data readers, and
seconds-long runs on the tiny bundles with a few data lines written by the tests."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distilserve.cli import main
from distilserve.models.evaluation.cli import Settings, evaluate, format_report
from distilserve.models.evaluation.data import DataError, read_squad, read_sst2, read_stsb
from distilserve.models.evaluation.metrics import (
    accuracy,
    cosine_rows,
    exact_match,
    f1,
    normalize_answer,
    pearson,
    rankdata,
    spearman,
    squad_scores,
)
from distilserve.models.evaluation.scorers import sst2_class
from tests.tiny_models import Arch, TinyTask

BundleMap = dict[tuple[Arch, TinyTask], Path]

SST2_LINES = [
    "sentence\tlabel",
    "the film was wonderful from start to finish . \t1",
    "this movie is awful \t0",
    'a "charming" plot , and i loved it\t1',
    "the service was terrible despite the hype\t0",
    "the soundtrack felt brilliant\t1",
    "my order remained boring\t0",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder in the shared layout, with a handful of lines per set."""
    (tmp_path / "sst2_dev.tsv").write_text("\n".join(SST2_LINES) + "\n", encoding="utf-8")
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "The film was shot in Paris in 1999 by a French director.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Where was the film shot?",
                                "answers": [{"text": "Paris"}],
                            },
                            {
                                "id": "q2",
                                "question": "When was the film shot?",
                                "answers": [{"text": "1999"}, {"text": "in 1999"}],
                            },
                        ],
                    },
                    {
                        "context": "The battery lasted for most of the evening.",
                        "qas": [
                            {"id": "q3", "question": "What lasted?", "answers": [{"text": "The battery"}]}
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "squad_v1.1_dev.json").write_text(json.dumps(squad), encoding="utf-8")
    sts = tmp_path / "stsbenchmark"
    sts.mkdir()
    rows = [
        ("5.000", "The film was wonderful.", "The movie was wonderful."),
        ("0.500", "The battery was slow.", "A waiter looked charming."),
        ("3.200", "The plot felt boring.", "The plot was slow and boring."),
        ("1.000", "Our hotel was excellent.", "The flight was terrible."),
        # Some rows of the real file carry extra trailing fields.
        ("4.000", "This phone is brilliant.", "This phone is excellent.\tsource-note\textra"),
    ]
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s}\t{a}\t{b}" for i, (s, a, b) in enumerate(rows)]
    (sts / "sts-dev.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


# Metrics -------------------------------------------------------------------------------------


def test_squad_normalisation_follows_the_official_script() -> None:
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("an apple, a pear & THE plum.") == "apple pear plum"
    # Articles only as whole words: "theatre" keeps its "the".
    assert normalize_answer("Theatre of the Absurd") == "theatre of absurd"


def test_exact_match_and_f1_against_hand_computed_values() -> None:
    assert exact_match("The Denver Broncos", "denver broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # pred {cat, sat} vs gold {cat, sat, down}: precision 1, recall 2/3, F1 0.8.
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert f1("dog", "cat") == 0.0
    # Repeated tokens count as many times as they appear on both sides: 1 common "a b"... pred
    # "paris paris" vs gold "paris": common 1, precision 1/2, recall 1, F1 2/3.
    assert f1("paris paris", "paris") == pytest.approx(2 / 3)


def test_squad_scores_take_the_best_gold_answer_and_count_missing_predictions_as_zero() -> None:
    gold = {"a": ["Paris", "in Paris"], "b": ["1999"], "c": ["blue"]}
    scores = squad_scores({"a": "in Paris", "b": "the year 1999"}, gold)
    # a: EM 1, F1 1; b: EM 0, F1 = 2*(1/3*1)/(1/3+1) = 0.5 ("the" is dropped: {year, 1999}); c: 0.
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_rankdata_gives_ties_their_average_rank() -> None:
    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert rankdata([3, 1, 3, 3, 2]).tolist() == [4.0, 1.0, 4.0, 4.0, 2.0]
    assert rankdata([]).tolist() == []
    with pytest.raises(ValueError):
        rankdata([1.0, math.nan])


def test_spearman_against_hand_computed_and_scipy_values() -> None:
    # No ties: 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/60 = 0.8.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=200).astype(float)  # many ties
    y = x + rng.normal(0, 2, size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert rankdata(x).tolist() == stats.rankdata(x).tolist()
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_accuracy_and_cosines() -> None:
    assert accuracy([1, 0, None, 1], [1, 1, 0, 1]) == 0.5
    with pytest.raises(ValueError):
        accuracy([1], [1, 0])
    cosines = cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]]))
    assert cosines.tolist() == pytest.approx([1.0, -1.0])


def test_sst2_classes_are_read_by_label_name() -> None:
    assert sst2_class("POSITIVE", 0, 2) == 1
    assert sst2_class("negative", 1, 2) == 0
    assert sst2_class("LABEL_1", 1, 2) == 1
    assert sst2_class("neutral", 1, 3) is None  # a third class is never right on SST-2
    assert sst2_class("whatever", 1, 2) == 1  # two unnamed labels: by index


# Data readers --------------------------------------------------------------------------------


def test_readers_parse_the_shared_formats(data_dir: Path) -> None:
    sst2 = read_sst2(data_dir / "sst2_dev.tsv")
    assert len(sst2) == 6 and sst2.labels == [1, 0, 1, 0, 1, 0]
    assert sst2.texts[2] == 'a "charming" plot , and i loved it'  # bare quotes kept (QUOTE_NONE)
    assert len(read_sst2(data_dir / "sst2_dev.tsv", limit=2)) == 2
    squad = read_squad(data_dir / "squad_v1.1_dev.json")
    assert [example.id for example in squad] == ["q1", "q2", "q3"]
    assert squad[1].answers == ["1999", "in 1999"]
    assert len(read_squad(data_dir / "squad_v1.1_dev.json", limit=1)) == 1
    sts = read_stsb(data_dir / "stsbenchmark" / "sts-dev.csv")
    assert len(sts) == 5 and sts.scores[0] == 5.0
    assert sts.second[4] == "This phone is excellent."  # extra trailing fields ignored
    with pytest.raises(DataError, match="not found"):
        read_sst2(data_dir / "missing.tsv")


def test_the_real_data_files_parse_when_present() -> None:
    from tests.conftest import shared_data_dir

    folder = shared_data_dir()
    if not (folder / "sst2_dev.tsv").is_file():
        pytest.skip(f"no shared data at {folder}")
    assert len(read_sst2(folder / "sst2_dev.tsv")) == 872
    assert len(read_stsb(folder / "stsbenchmark" / "sts-dev.csv")) == 1500
    assert len(read_squad(folder / "squad_v1.1_dev.json", limit=50)) == 50


# End to end on the tiny bundles --------------------------------------------------------------


def test_sst2_eval_scores_int8_fp32_and_source_on_the_same_examples(
    tiny_bundles: BundleMap, tiny_int8_bundles: BundleMap, tiny_checkpoints: BundleMap, data_dir: Path
) -> None:
    key = ("bert", "text-classification")
    report = evaluate(
        Settings(
            bundle=tiny_int8_bundles[key],
            dataset="sst2",
            fp32_bundle=tiny_bundles[key],
            source=str(tiny_checkpoints[key]),
            data_dir=data_dir,
        )
    )
    assert [entry.name for entry in report.models] == ["bundle", "fp32 bundle", "PyTorch source"]
    assert all(entry.examples == 6 for entry in report.models)
    for entry in report.models:
        # Six examples: accuracy is a multiple of 1/6.
        assert entry.metrics["accuracy"] * 6 / 100 == pytest.approx(
            round(entry.metrics["accuracy"] * 6 / 100)
        )
    by_name = {entry.name: entry.metrics["accuracy"] for entry in report.models}
    # The fp32 graph computes the checkpoint's function: same predictions, same accuracy.
    assert by_name["fp32 bundle"] == by_name["PyTorch source"]
    assert set(report.deltas_vs_fp32) == {"bundle", "PyTorch source"}
    assert report.deltas_vs_fp32["bundle"] == pytest.approx(by_name["bundle"] - by_name["fp32 bundle"])
    table = "\n".join(format_report(report))
    assert "| fp32 bundle |" in table and "accuracy" in table


def test_squad_eval_matches_the_pipeline_on_the_tiny_qa_model(
    tiny_bundles: BundleMap, tiny_checkpoints: BundleMap, data_dir: Path
) -> None:
    key = ("bert", "question-answering")
    report = evaluate(
        Settings(
            bundle=tiny_bundles[key], dataset="squad", source=str(tiny_checkpoints[key]), data_dir=data_dir
        )
    )
    bundle, source = report.models
    assert bundle.examples == source.examples == 3
    assert set(bundle.metrics) == {"exact_match", "f1"}
    assert 0.0 <= bundle.metrics["exact_match"] <= bundle.metrics["f1"] <= 100.0
    # The QA processor reproduces the transformers pipeline: identical answers, identical scores.
    assert bundle.metrics == pytest.approx(source.metrics)


def test_stsb_eval_reports_spearman_of_cosines(
    tiny_int8_bundles: BundleMap, tiny_bundles: BundleMap, tiny_checkpoints: BundleMap, data_dir: Path
) -> None:
    key = ("bert", "feature-extraction")
    report = evaluate(
        Settings(
            bundle=tiny_int8_bundles[key],
            dataset="stsb",
            fp32_bundle=tiny_bundles[key],
            source=str(tiny_checkpoints[key]),
            data_dir=data_dir,
            limit=4,
        )
    )
    assert [entry.examples for entry in report.models] == [4, 4, 4]
    values = {entry.name: entry.metrics["spearman"] for entry in report.models}
    assert all(-100.0 <= value <= 100.0 for value in values.values())
    # Four pairs: Spearman is one of a few rank values, so fp32 graph and PyTorch agree exactly.
    assert values["fp32 bundle"] == pytest.approx(values["PyTorch source"])


def test_a_bundle_of_the_wrong_task_is_refused(tiny_bundles: BundleMap, data_dir: Path) -> None:
    with pytest.raises(DataError, match="needs text-classification"):
        evaluate(
            Settings(bundle=tiny_bundles[("bert", "feature-extraction")], dataset="sst2", data_dir=data_dir)
        )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``distilserve.cli.main`` points the root logger at the current stderr (the test's capture);
    put the previous handlers back so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_the_cli_prints_the_table_and_writes_json(
    tiny_int8_bundles: BundleMap, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "eval.json"
    bundle = tiny_int8_bundles[("distilbert", "text-classification")]
    argv = ["eval", str(bundle), "--dataset", "sst2", "--data-dir", str(data_dir), "--limit", "3"]
    assert main([*argv, "--output", str(output)]) == 0
    assert "| bundle |" in capsys.readouterr().out
    saved = json.loads(output.read_text())
    assert saved["examples"] == 3 and saved["dataset"] == "sst2" and len(saved["models"]) == 1
    assert main(["eval", str(bundle), "--dataset", "sst2", "--data-dir", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_without_source_does_not_import_torch(tiny_int8_bundles: BundleMap, data_dir: Path) -> None:
    bundle = tiny_int8_bundles[("bert", "text-classification")]
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from distilserve.models.evaluation.cli import Settings, run\n"
        f"settings = Settings(bundle=Path({str(bundle)!r}), dataset='sst2',"
        f" data_dir=Path({str(data_dir)!r}))"
        "\n"
        "assert run(settings) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_compared_bundles_are_scored_in_the_same_run(
    tiny_int8_bundles: BundleMap, tiny_bundles: BundleMap, data_dir: Path
) -> None:
    """A student beside its teacher: every named bundle on the same examples, with its speed."""
    student = tiny_int8_bundles[("bert", "text-classification")]
    teacher = tiny_bundles[("distilbert", "text-classification")]
    report = evaluate(
        Settings(
            bundle=student,
            dataset="sst2",
            fp32_bundle=tiny_bundles[("bert", "text-classification")],
            compare=[f"teacher-fp32={teacher}"],
            data_dir=data_dir,
        )
    )
    assert [entry.name for entry in report.models] == ["bundle", "fp32 bundle", "teacher-fp32"]
    assert report.models[2].path == str(teacher) and report.models[2].examples == 6
    table = format_report(report)
    assert table[2].endswith("| seconds | examples/s |")
    assert "| teacher-fp32 |" in "\n".join(table)


@pytest.mark.parametrize("spec", ["teacher", "=folder", "name="])
def test_compare_needs_a_name_and_a_folder(tiny_int8_bundles: BundleMap, data_dir: Path, spec: str) -> None:
    bundle = tiny_int8_bundles[("bert", "text-classification")]
    with pytest.raises(DataError, match="NAME=DIR"):
        evaluate(Settings(bundle=bundle, dataset="sst2", compare=[spec], data_dir=data_dir))


def test_batch_invariance_and_speed_rounds_are_reported_per_bundle(
    tiny_int8_bundles: BundleMap, tiny_bundles: BundleMap, tiny_checkpoints: BundleMap, data_dir: Path
) -> None:
    """--batch-invariance measures every bundle (not the PyTorch source); --speed-rounds times the
    bundles together and gives each one's speed relative to the first."""
    key = ("bert", "text-classification")
    report = evaluate(
        Settings(
            bundle=tiny_int8_bundles[key],
            dataset="sst2",
            fp32_bundle=tiny_bundles[key],
            source=str(tiny_checkpoints[key]),
            data_dir=data_dir,
            batch_invariance=True,
            invariance_batch_size=4,
            speed_rounds=2,
        )
    )
    bundle, fp32, source = report.models
    for entry in (bundle, fp32):
        assert entry.invariance is not None
        assert entry.invariance["rows"] == 6
        # The default int8 export and fp32 are both batch invariant.
        assert entry.invariance["max_abs_diff"] <= 1e-3 and entry.invariance["changed_argmax"] == 0
        assert entry.median_pass_s is not None and entry.median_pass_s > 0
    assert bundle.speed_vs_first == 1.0
    assert fp32.speed_vs_first is not None and fp32.speed_vs_first > 0
    assert source.invariance is None and source.speed_vs_first is None
    lines = format_report(report)
    assert any(line.startswith("batch invariance: each of 6 rows") for line in lines)
    # name | max abs change | changed argmax 0 | no cosine for a classifier
    assert any(line.startswith("| bundle |") and line.endswith("| 0 | - |") for line in lines)
    assert any(line.startswith("| fp32 bundle |") and "x | " in line for line in lines)
    saved = json.loads(report.to_json())
    assert saved["models"][0]["invariance"]["changed_argmax"] == 0


def test_stsb_batch_invariance_reports_the_lowest_cosine(
    tiny_int8_bundles: BundleMap, data_dir: Path
) -> None:
    report = evaluate(
        Settings(
            bundle=tiny_int8_bundles[("bert", "feature-extraction")],
            dataset="stsb",
            data_dir=data_dir,
            batch_invariance=True,
        )
    )
    (entry,) = report.models
    assert entry.invariance is not None and entry.invariance["min_cosine"] >= 0.9999
    assert "changed_argmax" not in entry.invariance


def test_engines_side_by_side_with_each_speed_order(tiny_bundles: BundleMap, data_dir: Path) -> None:
    """--engines scores each bundle once per engine, named after it; --speed-orders times each order.
    OpenVINO runs an fp32 bundle's model.onnx, so this needs no OpenVINO form (skipped without it)."""
    pytest.importorskip("openvino", reason='openvino is not installed (pip install "distilserve[openvino]")')
    key = ("bert", "text-classification")
    report = evaluate(
        Settings(
            bundle=tiny_bundles[key],
            dataset="sst2",
            data_dir=data_dir,
            engines=["onnxruntime", "openvino"],
            speed_rounds=1,
            speed_orders=["arrival", "single"],
        )
    )
    onnx, openvino = report.models
    assert (onnx.name, openvino.name) == ("bundle [onnxruntime]", "bundle [openvino]")
    assert onnx.kind == "onnxruntime fp32" and openvino.kind.startswith("openvino ")
    assert onnx.metrics == pytest.approx(openvino.metrics, abs=20.0)
    for entry in (onnx, openvino):
        assert set(entry.items_per_s) == {"arrival", "single"} and min(entry.items_per_s.values()) > 0
    assert any("arrival items/s | single items/s" in line for line in format_report(report))
