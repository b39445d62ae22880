"""What a fresh clone serves with no --model: the shipped SST-2 student (and MiniLM, see the slow suite)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from distilserve.server.app import build_app
from distilserve.server.main import default_model_specs
from distilserve.server.settings import ServerSettings


def test_the_shipped_sentiment_student_is_served_by_default(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path, build_default=False)
    specs = {spec.name: spec for spec in default_model_specs(settings)}
    assert "sst2-sentiment" in specs, "model-zoo/sst2-minilm-l3-int8 should ship with the repository"
    texts = ["A gripping, beautifully acted and genuinely funny film.", "Dull, lifeless and far too long."]
    with TestClient(build_app(settings, [specs["sst2-sentiment"]])) as client:
        response = client.post("/v1/classify", json={"input": texts})
    assert response.status_code == 200, response.text
    assert [item["label"] for item in response.json()["data"]] == ["positive", "negative"]


def test_without_a_zoo_or_a_default_build_there_is_nothing_to_serve(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path, build_default=False, model_zoo=tmp_path / "none")
    assert default_model_specs(settings) == []


@pytest.mark.parametrize(
    "argv", [["serve", "--model-zoo", "/nonexistent", "--no-build-default", "--cache-dir"]]
)
def test_serve_refuses_to_start_with_nothing_to_serve(argv: list[str], tmp_path: Path) -> None:
    from distilserve.cli import main

    assert main([*argv, str(tmp_path)]) == 2


def test_the_shipped_reader_is_served_by_default_and_reads_long_contexts(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path, build_default=False)
    specs = {spec.name: spec for spec in default_model_specs(settings)}
    assert "squad-reader" in specs, "model-zoo/squad-minilm-l3-int8 should ship with the repository"
    question = "Where do I live?"
    short = "My name is Wolfgang and I live in Berlin."
    # About 900 tokens before the answer: it lies several doc_stride windows in.
    filler = " ".join(
        f"Paragraph {index} is about the weather, which was mild and grey for most of the week."
        for index in range(50)
    )
    with TestClient(build_app(settings, [specs["squad-reader"]])) as client:
        answers = []
        for context in (short, f"{filler} {short}"):
            response = client.post("/v1/answer", json={"inputs": {"question": question, "context": context}})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        info = client.get("/info").json()
    assert [answer["answer"] for answer in answers] == ["Berlin", "Berlin"]
    long_context = f"{filler} {short}"
    assert long_context[answers[1]["start"] : answers[1]["end"]] == "Berlin"
    assert "squad-reader" in str(info)
