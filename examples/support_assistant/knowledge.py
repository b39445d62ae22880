"""The knowledge base: the project's Markdown documentation cut into passages.

A passage is a few consecutive paragraphs of one section, small enough for the reader to see
whole (its 384-token windows) and for an embedding to stay about one thing. Markdown syntax is
stripped, because neither model was trained on it: a table row becomes "a; b; c", a link its
text, and code blocks (commands, JSON) are left out, since their answers are not sentences.
Each passage keeps its file and section title, so an answer can say where it came from.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
EMPHASIS = re.compile(r"(\*\*|__|`)")
TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}")
# How passages are retrieved for the reranker: by the embedding's cosine alone, or "hybrid", the
# cosine's ranking fused with BM25's (reciprocal rank fusion), which finds passages that share a
# rare word with the message (a flag, a file name) when the embedding misses them.
Retrieval = Literal["embeddings", "hybrid"]
# Reciprocal rank fusion's constant: a passage scores 1 / (RRF_K + rank) in each ranking (rank 1
# the best), as Cormack, Clarke and Buettcher (2009) fuse rankings; 60 is their value.
RRF_K = 60


@dataclass(frozen=True, slots=True)
class Passage:
    source: str  # file, relative to the documentation root, e.g. "README.md"
    section: str  # the heading path, e.g. "Configuration"
    text: str

    @property
    def citation(self) -> str:
        return f"{self.source} § {self.section}" if self.section else self.source


def plain_text(line: str) -> str:
    """One Markdown line as plain text: links to their text, no emphasis or code marks."""
    line = LINK.sub(r"\1", line)
    line = EMPHASIS.sub("", line)
    if line.lstrip().startswith("|"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        line = "; ".join(cell for cell in cells if cell)
    line = re.sub(r"^\s*[-*]\s+", "", line)  # list bullets
    return line.strip()


def _blocks(markdown: str) -> Iterable[tuple[str, str]]:
    """(section title, paragraph) pairs in document order; code blocks are skipped."""
    section = ""
    paragraph: list[str] = []
    in_code = False
    for raw in markdown.splitlines():
        if raw.lstrip().startswith("```"):
            in_code = not in_code
            if paragraph:
                yield section, " ".join(paragraph)
                paragraph = []
            continue
        if in_code:
            continue
        heading = HEADING.match(raw)
        if heading:
            if paragraph:
                yield section, " ".join(paragraph)
                paragraph = []
            section = plain_text(heading.group(2))
            continue
        if not raw.strip() or TABLE_RULE.match(raw.strip()):
            if paragraph and not raw.strip():
                yield section, " ".join(paragraph)
                paragraph = []
            continue
        text = plain_text(raw)
        if not text:
            continue
        stripped = raw.lstrip()
        if stripped.startswith("|"):
            # A table row is a block of its own, closed as a sentence.
            if paragraph:
                yield section, " ".join(paragraph)
                paragraph = []
            yield section, text if text[-1] in ".:;!?" else f"{text}."
            continue
        if stripped.startswith(("- ", "* ")) or re.match(r"^\d+\.\s", stripped):
            # A list item starts a block; its indented continuation lines join it.
            if paragraph:
                yield section, " ".join(paragraph)
            paragraph = [re.sub(r"^\d+\.\s+", "", text)]
            continue
        paragraph.append(text)
    if paragraph:
        yield section, " ".join(paragraph)


def split_markdown(markdown: str, source: str, max_words: int = 120) -> list[Passage]:
    """Consecutive paragraphs of one section, joined up to ``max_words`` words.

    A paragraph longer than ``max_words`` stays whole (the reader splits long contexts into
    windows itself); a paragraph never crosses a section boundary.
    """
    passages: list[Passage] = []
    current: list[str] = []
    current_section = ""
    words = 0

    def flush() -> None:
        nonlocal current, words
        if current:
            passages.append(Passage(source, current_section, " ".join(current)))
        current, words = [], 0

    for section, paragraph in _blocks(markdown):
        length = len(paragraph.split())
        if section != current_section or words + length > max_words:
            flush()
            current_section = section
        current.append(paragraph)
        words += length
    flush()
    return [passage for passage in passages if len(passage.text.split()) >= 4]


def documentation_files(root: Path) -> list[Path]:
    """The project's documentation: its README and every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def load_passages(root: Path, max_words: int = 120) -> list[Passage]:
    passages: list[Passage] = []
    for path in documentation_files(root):
        if path.is_file():
            source = path.relative_to(root).as_posix()
            passages += split_markdown(path.read_text(encoding="utf-8"), source, max_words)
    return passages


class KnowledgeBase:
    """Passages and their unit-length embeddings: retrieval is one matrix product (and, for
    ``retrieval="hybrid"``, a BM25 index over the same texts)."""

    def __init__(
        self,
        passages: Sequence[Passage],
        embeddings: npt.NDArray[np.float32],
        retrieval: Retrieval = "embeddings",
    ) -> None:
        if len(passages) != len(embeddings):
            raise ValueError(f"{len(passages)} passages but {len(embeddings)} embeddings")
        if not passages:
            raise ValueError("the knowledge base is empty")
        self.passages = list(passages)
        self.embeddings = normalise(embeddings)
        self.retrieval = retrieval
        self._lexical = (
            LexicalIndex([indexed_text(passage) for passage in passages]) if retrieval == "hybrid" else None
        )

    def search(
        self, query: npt.NDArray[np.float32], top_k: int, text: str | None = None
    ) -> list[tuple[Passage, float]]:
        """The ``top_k`` passages for the message embedded as ``query`` (whose words are ``text``),
        best first, each with its cosine similarity: by the cosine, or fused with BM25's ranking
        of ``text`` where the base is hybrid."""
        similarities = self.embeddings @ normalise(query[None, :])[0]
        if self._lexical is None or text is None:
            best = np.argsort(-similarities, kind="stable")[:top_k]
        else:
            lexical = self._lexical.scores(text)
            # A passage that shares no word with the message has no lexical rank: ranking those
            # too would favour whichever come first in the documentation.
            fused = reciprocal_ranks(similarities) + np.where(lexical > 0, reciprocal_ranks(lexical), 0.0)
            best = np.argsort(-fused, kind="stable")[:top_k]
        return [(self.passages[index], float(similarities[index])) for index in best]


def indexed_text(passage: Passage) -> str:
    """What a passage is retrieved by: its section title (which says what a terse passage is
    about) and its text."""
    return f"{passage.section}: {passage.text}"


def reciprocal_ranks(scores: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Each entry's term of reciprocal rank fusion, 1 / (RRF_K + rank), rank 1 the highest score
    (ties by position); a fused ranking sums these over its rankings."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.float64)
    ranks[order] = np.arange(1, len(order) + 1)
    terms: npt.NDArray[np.float64] = 1.0 / (RRF_K + ranks)
    return terms


class LexicalIndex:
    """BM25 over the passages (``bm25s``, English stop words), the lexical half of hybrid search."""

    def __init__(self, texts: Sequence[str]) -> None:
        try:
            import bm25s  # only for hybrid retrieval: installed with distilserve's [export] extra
        except ImportError as exc:
            raise RuntimeError(
                "hybrid retrieval needs bm25s (pip install 'bm25s>=0.2,<0.4'); "
                "or run with --retrieval embeddings"
            ) from exc

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # one debug line per index build
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(self._tokens(texts), show_progress=False)
        self.size = len(texts)

    def _tokens(self, texts: Sequence[str]) -> Any:
        return self._bm25s.tokenize(list(texts), stopwords="en", show_progress=False, return_ids=False)

    def scores(self, text: str) -> npt.NDArray[np.float64]:
        """BM25 score of every passage for ``text`` (0 where no word is shared)."""
        (tokens,) = self._tokens([text])
        if not tokens:  # only stop words: no lexical evidence either way
            return np.zeros(self.size, dtype=np.float64)
        return np.asarray(self._index.get_scores(tokens), dtype=np.float64)


def normalise(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    result: npt.NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return result
