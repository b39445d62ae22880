"""The support assistant against the live default server, through its own HTTP API and its
terminal chat: the held-out test split of questions.json, at the calibrated settings.

Slow: the default server exports all-MiniLM-L6-v2 on first use, and the documentation is
embedded at the example's start-up.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from distilserve.server.app import build_app
from distilserve.server.main import default_model_specs
from distilserve.server.settings import ServerSettings
from examples.support_assistant.app import build_app as build_assistant_app
from examples.support_assistant.assistant import I_DONT_KNOW
from examples.support_assistant.evaluation import exact_match, load_questions
from examples.support_assistant.settings import AssistantSettings
from tests.conftest import REPO_ROOT
from tests.server.conftest import LiveServer

pytestmark = pytest.mark.slow

TEST_SPLIT = load_questions("test")
ANSWERABLE = [question for question in TEST_SPLIT if question.answerable]
UNANSWERABLE = [question for question in TEST_SPLIT if not question.answerable and not question.hostile]
HOSTILE = [question for question in TEST_SPLIT if question.hostile]


def test_the_test_split_is_the_one_the_issue_asks_for() -> None:
    assert (len(ANSWERABLE), len(UNANSWERABLE), len(HOSTILE)) == (10, 3, 1)
    calibration = {question.question for question in load_questions("calibration")}
    assert not calibration & {question.question for question in TEST_SPLIT}, "the test split is held out"


@pytest.fixture(scope="module")
def distilserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The default server (`make serve`'s models) on a free loopback port."""
    settings = ServerSettings(cache_dir=tmp_path_factory.mktemp("cache"))
    with LiveServer(build_app(settings, default_model_specs(settings))) as server:
        yield server


@pytest.fixture(scope="module")
async def chat(distilserve: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """The assistant's FastAPI app with its start-up run (the documentation embedded)."""
    app = build_assistant_app(AssistantSettings(distilserve_url=distilserve.url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://assistant.test") as client:
            yield client


async def ask(chat: httpx.AsyncClient, message: str) -> dict[str, object]:
    response = await chat.post("/chat", json={"message": message})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_documented_questions_are_answered_from_the_right_file(chat: httpx.AsyncClient) -> None:
    replies = {question.question: await ask(chat, question.question) for question in ANSWERABLE}
    correct = [
        question.question
        for question in ANSWERABLE
        if replies[question.question]["known"]
        and exact_match(str(replies[question.question]["answer"]), question.answers)
    ]
    # 7 of 10 at the calibrated settings with the 3-layer reranker (8 with the 6-layer teacher
    # before it; examples/support_assistant/README.md has both runs).
    assert len(correct) >= 7, {question: reply["answer"] for question, reply in replies.items()}
    # Every reply names the passage it read; every right answer cites a file that states it.
    # (A wrong answer given, 3 of 10 at the calibrated settings, is what the accuracy counts.)
    for question in ANSWERABLE:
        source = replies[question.question]["source"]
        assert isinstance(source, dict)
        assert source["passage"], question.question
        if question.question in correct:
            assert source["file"] in question.sources, (question.question, source)
    for question in correct:
        reply = replies[question]
        assert isinstance(reply["source"], dict) and isinstance(reply["confidence"], float)
        # The answer is a span of the passage it cites.
        assert str(reply["answer"]) in str(reply["source"]["passage"])
        assert reply["confidence"] > 0


async def test_questions_the_documentation_cannot_answer_get_i_dont_know(chat: httpx.AsyncClient) -> None:
    for question in UNANSWERABLE:
        reply = await ask(chat, question.question)
        assert (reply["answer"], reply["known"]) == (I_DONT_KNOW, False), question.question


async def test_a_hostile_message_is_flagged_for_a_human(chat: httpx.AsyncClient) -> None:
    for question in HOSTILE:
        reply = await ask(chat, question.question)
        assert reply["needs_human"] is True, reply
        assert reply["sentiment"] == "negative"


async def test_a_blank_message_is_refused(chat: httpx.AsyncClient) -> None:
    response = await chat.post("/chat", json={"message": "   "})
    assert response.status_code == 422


async def test_the_terminal_chat_says_what_the_http_api_says(
    distilserve: LiveServer, chat: httpx.AsyncClient
) -> None:
    question = ANSWERABLE[0].question
    expected = await ask(chat, question)
    script = f"{question}\n{HOSTILE[0].question}\n\n"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "examples.support_assistant", "--distilserve-url", distilserve.url],
        input=script,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=True,
    )
    assert "passages of documentation loaded" in result.stdout
    assert f"assistant: {expected['answer']}\n" in result.stdout, result.stdout
    assert isinstance(expected["source"], dict)
    assert f"source {expected['source']['file']} § {expected['source']['section']}" in result.stdout
    assert "flagged for a human" in result.stdout, result.stdout
