"""Passages from Markdown, retrieval, the confidence, and the thresholds the labelled set picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from examples.support_assistant.assistant import Candidate, best_candidate, confidence
from examples.support_assistant.client import Span
from examples.support_assistant.evaluation import (
    LabelledQuestion,
    Scored,
    accuracy_at,
    choose_human_threshold,
    choose_threshold,
    exact_match,
    load_questions,
    normalize_answer,
)
from examples.support_assistant.knowledge import (
    RRF_K,
    KnowledgeBase,
    Passage,
    load_passages,
    reciprocal_ranks,
    split_markdown,
)
from tests.conftest import REPO_ROOT

MARKDOWN = """# Title

An opening paragraph with a [link](https://example.com) and `code` and **bold**.

## Settings

| Flag | Default |
|---|---|
| `--port` | 8080 |

- a list item
  that wraps
- another item

```bash
make serve  # code is left out
```

## Other

A last paragraph about something else entirely.
"""


def test_markdown_becomes_plain_passages_within_sections() -> None:
    passages = split_markdown(MARKDOWN, "README.md", max_words=100)
    assert [(passage.section, passage.text) for passage in passages] == [
        ("Title", "An opening paragraph with a link and code and bold."),
        ("Settings", "Flag; Default. --port; 8080. a list item that wraps another item"),
        ("Other", "A last paragraph about something else entirely."),
    ]
    assert passages[1].citation == "README.md § Settings"


def test_passages_are_cut_at_max_words_but_paragraphs_stay_whole() -> None:
    paragraph = " ".join(["word"] * 30)
    markdown = "\n\n".join([paragraph] * 4)
    assert [len(p.text.split()) for p in split_markdown(markdown, "x.md", max_words=70)] == [60, 60]
    assert [len(p.text.split()) for p in split_markdown(markdown, "x.md", max_words=10)] == [30] * 4


def test_the_knowledge_base_is_the_readme_and_docs() -> None:
    passages = load_passages(REPO_ROOT)
    assert {passage.source for passage in passages} >= {
        "README.md",
        "docs/architecture.md",
        "docs/deploying.md",
    }
    assert not any("```" in passage.text for passage in passages)


def test_search_ranks_by_cosine() -> None:
    passages = [Passage("a.md", "", "north"), Passage("b.md", "", "east"), Passage("c.md", "", "north-east")]
    knowledge = KnowledgeBase(passages, np.array([[0, 2], [3, 0], [1, 1]], dtype=np.float32))
    hits = knowledge.search(np.array([0.1, 1.0], dtype=np.float32), top_k=2)
    assert [passage.text for passage, _ in hits] == ["north", "north-east"]
    assert hits[0][1] == pytest.approx(1.0 / np.hypot(0.1, 1.0))
    with pytest.raises(ValueError):
        KnowledgeBase(passages, np.zeros((2, 2), dtype=np.float32))


def test_reciprocal_ranks_are_one_over_k_plus_rank() -> None:
    assert reciprocal_ranks(np.array([0.5, 0.9, 0.1, 0.5])) == pytest.approx(
        [1 / (RRF_K + 2), 1 / (RRF_K + 1), 1 / (RRF_K + 4), 1 / (RRF_K + 3)]
    )


def test_hybrid_search_finds_a_rare_word_the_embedding_misses() -> None:
    # The embedding ranks the flag's passage last; BM25 ranks it first for a message naming the
    # flag, so the fused ranking lifts it into the top 2. Its cosine is still what is reported.
    passages = [
        Passage("a.md", "Serving", "The server batches requests from many clients."),
        Passage("b.md", "Serving", "Requests are answered in order of arrival."),
        Passage("c.md", "Flags", "Set --max-batch-tokens to bound a batch."),
    ]
    vectors = np.array([[1.0, 0.1], [0.9, 0.3], [0.0, 1.0]], dtype=np.float32)
    query = np.array([1.0, 0.2], dtype=np.float32)
    message = "what does --max-batch-tokens do to requests"
    embeddings_only = KnowledgeBase(passages, vectors)
    assert [p.source for p, _ in embeddings_only.search(query, 2, message)] == ["a.md", "b.md"]
    hybrid = KnowledgeBase(passages, vectors, retrieval="hybrid")
    hits = hybrid.search(query, 2, message)
    assert "c.md" in [passage.source for passage, _ in hits]
    cosines = dict(embeddings_only.search(query, 3))
    assert all(similarity == pytest.approx(cosines[passage]) for passage, similarity in hits)
    # A passage that shares no word with the message gains nothing from BM25: here only c.md
    # does, so it rises to the top and a.md and b.md keep the embedding's 1/(K+1) and 1/(K+2).
    three = hybrid.search(query, 3, "max-batch-tokens")
    assert [passage.source for passage, _ in three] == ["c.md", "a.md", "b.md"]
    # Without the message's words (or with stop words alone) it is the embedding's ranking.
    assert hybrid.search(query, 2) == embeddings_only.search(query, 2)
    assert hybrid.search(query, 2, "what is the") == embeddings_only.search(query, 2)


def candidate(answer: str, score: float, similarity: float) -> Candidate:
    return Candidate(Passage("README.md", "", answer), similarity, Span(answer, score, 0, len(answer)))


def test_the_relevance_weight_trades_the_reader_against_retrieval() -> None:
    sure_but_unrelated, unsure_but_relevant = candidate("429", 0.8, 0.3), candidate("8080", 0.3, 0.6)
    assert confidence(sure_but_unrelated, 0.0) == 0.8
    assert confidence(unsure_but_relevant, 2.0) == pytest.approx(0.3 * 0.36)
    assert best_candidate([sure_but_unrelated, unsure_but_relevant], 0.0) is sure_but_unrelated
    assert best_candidate([sure_but_unrelated, unsure_but_relevant], 3.0) is unsure_but_relevant


def test_a_rerankers_score_is_the_relevance_when_there_is_one() -> None:
    passage = Passage("README.md", "", "8080")
    retrieved_only = Candidate(passage, -0.2, Span("8080", 0.5, 0, 4))
    reranked = Candidate(passage, 0.3, Span("8080", 0.5, 0, 4), rerank_score=0.9)
    assert retrieved_only.relevance == 0.0  # a negative cosine counts as no relevance
    assert reranked.relevance == 0.9
    assert confidence(reranked, 2.0) == pytest.approx(0.5 * 0.81)
    assert confidence(retrieved_only, 0.0) == 0.5


def test_squad_normalisation() -> None:
    assert normalize_answer("The  260 MB.") == "260 mb"
    assert exact_match("about 23 MB", ["23 MB", "about 23 MB"]) and not exact_match("23", ["23 MB"])


def labelled(question: str, answers: tuple[str, ...] = (), hostile: bool = False) -> LabelledQuestion:
    return LabelledQuestion(question, answers, (), "calibration", hostile)


def test_the_threshold_of_best_accuracy_is_chosen() -> None:
    scored = [
        Scored(labelled("q1", ("8080",)), (candidate("8080", 0.5, 0.5),), 0.1),  # right, confidence 0.25
        Scored(labelled("q2", ("x",)), (candidate("y", 0.9, 0.1),), 0.2),  # wrong, 0.09
        Scored(labelled("q3"), (candidate("z", 0.4, 0.2),), 0.97),  # unanswerable, 0.08
        Scored(labelled("q4"), (candidate("z", 0.2, 0.1),), 0.98),  # unanswerable, 0.02
    ]
    chosen = choose_threshold(scored, weights=(1.0,))
    # 0.09 and 0.25 both keep q1 and refuse q3 and q4 (q2 is wrong either way): the lower wins.
    assert chosen.threshold == pytest.approx(0.09) and chosen.accuracy == 0.75
    assert accuracy_at(scored, 1.0, 0.0) == 0.25  # answering everything: only q1 right
    hostile = Scored(labelled("you are useless", hostile=True), (candidate("z", 0.1, 0.1),), 0.985)
    threshold, flag_accuracy = choose_human_threshold([*scored, hostile])
    assert threshold == pytest.approx(0.985) and flag_accuracy == 1.0


def test_the_shipped_questions_are_labelled_and_split() -> None:
    questions = load_questions()
    assert {question.split for question in questions} == {"calibration", "test"}
    assert len({question.question for question in questions}) == len(questions)
    for question in questions:
        assert question.answerable == bool(question.sources), question.question
        for source in question.sources:
            assert (REPO_ROOT / source).is_file(), source
        assert not (question.hostile and question.answerable)
    # Every answer of the held-out split is stated, word for word, in one of its files.
    for question in load_questions("test"):
        if question.answerable:
            texts = [
                " ".join(p.text for p in load_passages(REPO_ROOT) if p.source == source)
                for source in question.sources
            ]
            assert any(answer in text for answer in question.answers for text in texts), question.question


def test_paths_are_relative_to_the_documentation_root(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# A\n\nThe readme says something here.\n")
    (tmp_path / "docs" / "guide" / "x.md").write_text("# B\n\nA nested guide says something too.\n")
    assert [passage.source for passage in load_passages(tmp_path)] == ["README.md", "docs/guide/x.md"]
