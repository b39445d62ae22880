"""Benchmark workloads from the shared data sets, as items (for the in-process ceiling) and as
pre-encoded HTTP requests (for the servers).

* classify: SST-2 dev sentences, one per request;
* qa: SQuAD v1.1 dev (question, context) pairs, one per request;
* embed: STS-B dev sentences (both columns), one per request;
* sweep: synthetic texts of exactly 8, 16, ... 512 tokens (special tokens included, counted by
  the bundle's own tokenizer), cut from SST-2 sentences, for latency against length;
* chat: one chatbot message per turn, as ``examples/support_assistant`` handles it: the SQuAD
  dev question is classified and embedded (concurrently), then read against 5 passages in one
  ``/v1/answer`` request (its own context and the next 4 distinct contexts of the dev set, in
  place of retrieved ones: the retrieval itself is a small matrix product on the client). With a
  rerank bundle, 20 passages are retrieved and reranked in one ``/v1/rerank`` request between
  the two, and the first 3 of them are read, as the assistant does by default (the turn is
  timed, not scored: which 3 the reranker would pick changes only their lengths);
* rerank: one SQuAD dev question and 20 passages per ``/v1/rerank`` request (its own context and
  the next 19 distinct contexts of the dev set, as a retriever's top 20 would be); an item is
  one (question, passage) pair, so items per second are pairs per second, served and in process.

One item per request is the online case the dynamic batcher exists for: every batch the
server runs is assembled from concurrent requests. Token counts come from the bundle's
tokenizer and task processor, so QA counts every window of a long context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from distilserve.bench.gemm_peak import EncoderFlops
from distilserve.bench.loadgen import BenchRequest, Call, ChatTurn
from distilserve.models.bundle import TOKENIZER_NAME, Task, read_manifest
from distilserve.models.evaluation.data import SQUAD_DEV, SST2_DEV, STSB_DEV, read_squad, read_sst2, read_stsb
from distilserve.models.tasks import QAInput, RerankPair, processor_for
from distilserve.models.tokenization import ThreadSafeTokenizer

WorkloadName = Literal["classify", "qa", "embed", "sweep", "chat", "rerank"]
CHAT_PASSAGES = 5
# Passages read after reranking: the support assistant's default (--top-k 3 of 20 reranked).
CHAT_PASSAGES_RERANKED = 3
# Passages per rerank request: a retriever's top 20.
RERANK_DOCUMENTS = 20
# The request shape a server speaks: distilserve's routes (which the PyTorch baseline copies),
# or infinity's OpenAI-style /embeddings.
Api = Literal["distilserve", "infinity"]
ROUTES: dict[Task, str] = {
    "text-classification": "/v1/classify",
    "question-answering": "/v1/answer",
    "feature-extraction": "/v1/embeddings",
    "rerank": "/v1/rerank",
}


@dataclass
class Workload:
    name: str
    task: Task
    items: list[Any]  # str, QAInput for question answering, RerankPair for rerank
    tokens: list[int]  # model tokens of each item (all rows, special tokens included)
    flops: list[float] = field(default_factory=list)  # useful operations per item, when counted
    # Items that must share a request (a rerank query's documents); 1: any grouping.
    per_request: int = 1

    def __len__(self) -> int:
        return len(self.items)

    @property
    def mean_tokens(self) -> float:
        return sum(self.tokens) / max(len(self.tokens), 1)

    def requests(
        self, model: str | None, api: Api = "distilserve", items_per_request: int = 1
    ) -> list[BenchRequest]:
        """Requests of ``items_per_request`` consecutive items each (one, the online case, by
        default), JSON encoded once, up front: the client only sends bytes."""
        flops = self.flops or [0.0] * len(self.items)
        size = self.per_request if self.per_request > 1 else max(1, items_per_request)
        requests = []
        for start in range(0, len(self.items), size):
            items = self.items[start : start + size]
            body = encode_body(self.task, items[0] if size == 1 else items, model, api)
            tokens = sum(self.tokens[start : start + size])
            requests.append(
                BenchRequest(self.path(api), body, len(items), tokens, sum(flops[start : start + size]))
            )
        return requests

    @property
    def total_flops(self) -> float:
        return sum(self.flops)

    def path(self, api: Api) -> str:
        if api == "infinity":
            if self.task != "feature-extraction":
                raise ValueError("infinity serves embeddings only")
            return "/embeddings"
        return ROUTES[self.task]


def encode_body(task: Task, item: Any, model: str | None, api: Api = "distilserve") -> bytes:
    """The JSON body for one item, or for a list of items (one request that carries several)."""
    body: dict[str, Any]
    if api == "infinity":
        body = {"input": item if isinstance(item, list) else [item]}
    elif task == "rerank":
        pairs = item if isinstance(item, list) else [item]
        body = {"query": pairs[0].query, "documents": [pair.document for pair in pairs]}
    elif task == "question-answering":
        pairs = item if isinstance(item, list) else [item]
        inputs = [{"question": pair.question, "context": pair.context} for pair in pairs]
        body = {"inputs": inputs if isinstance(item, list) else inputs[0]}
    else:
        body = {"input": item}
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


class BundleTokens:
    """The bundle's tokenizer and task processor, without an ONNX session: counts model tokens."""

    def __init__(self, bundle: Path) -> None:
        self.manifest = read_manifest(bundle)
        self.tokenizer = ThreadSafeTokenizer.from_file(bundle / TOKENIZER_NAME)
        self.processor = processor_for(self.manifest, self.tokenizer)

    def row_lengths(self, item: Any) -> list[int]:
        """Tokens of each model row of the item (a long QA context makes several windows)."""
        return [len(row) for row in self.processor.prepare(item, self.processor.default_params()).rows]


def _workload(name: str, bundle: Path, items: list[Any], flops: EncoderFlops | None) -> Workload:
    counter = BundleTokens(bundle)
    rows = [counter.row_lengths(item) for item in items]
    per_item = [sum(flops.per_sequence(length) for length in lengths) for lengths in rows] if flops else []
    return Workload(name, counter.manifest.task, items, [sum(lengths) for lengths in rows], per_item)


def classify_workload(
    bundle: Path, data_dir: Path, limit: int | None = None, flops: EncoderFlops | None = None
) -> Workload:
    return _workload("sst2-classify", bundle, read_sst2(data_dir / SST2_DEV, limit).texts, flops)


def qa_workload(
    bundle: Path, data_dir: Path, limit: int | None = None, flops: EncoderFlops | None = None
) -> Workload:
    examples = read_squad(data_dir / SQUAD_DEV, limit)
    items = [QAInput(question=example.question, context=example.context) for example in examples]
    return _workload("squad-qa", bundle, items, flops)


def rerank_workload(
    bundle: Path, data_dir: Path, limit: int | None = None, flops: EncoderFlops | None = None
) -> Workload:
    """``limit`` SQuAD dev questions (all by default), each with its own context and the next
    ``RERANK_DOCUMENTS - 1`` distinct contexts of the whole dev set: one request per question."""
    examples = read_squad(data_dir / SQUAD_DEV)
    contexts = list(dict.fromkeys(example.context for example in examples))
    position = {context: index for index, context in enumerate(contexts)}
    count = min(RERANK_DOCUMENTS, len(contexts))
    pairs = [
        RerankPair(example.question, contexts[(position[example.context] + offset) % len(contexts)])
        for example in examples[:limit]
        for offset in range(count)
    ]
    workload = _workload("squad-rerank", bundle, pairs, flops)
    workload.per_request = count
    return workload


def embed_workload(
    bundle: Path, data_dir: Path, limit: int | None = None, flops: EncoderFlops | None = None
) -> Workload:
    pairs = read_stsb(data_dir / STSB_DEV, None if limit is None else (limit + 1) // 2)
    sentences = [sentence for pair in zip(pairs.first, pairs.second, strict=True) for sentence in pair]
    return _workload("stsb-embed", bundle, sentences[:limit] if limit else sentences, flops)


@dataclass
class ChatWorkload(Workload):
    """Chat turns: ``items`` are the questions, ``passages`` the contexts each one reads."""

    passages: list[list[str]] = field(default_factory=list)
    # Per question, the passages the reranker orders before the reading (empty: no rerank stage).
    reranked: list[list[str]] = field(default_factory=list)

    def requests(
        self, model: str | None, api: Api = "distilserve", items_per_request: int = 1
    ) -> list[BenchRequest]:
        """One ``ChatTurn`` per question; the default model of each task answers (``model`` and
        ``items_per_request`` do not apply: a turn is the example's three requests)."""
        if api != "distilserve":
            raise ValueError("the chat workload runs against distilserve only")
        turns: list[BenchRequest] = []
        reranked = self.reranked or [[] for _ in self.items]
        for question, passages, documents, tokens in zip(
            self.items, self.passages, reranked, self.tokens, strict=True
        ):
            text = orjson.dumps({"input": question})
            first = (Call(ROUTES["text-classification"], text), Call(ROUTES["feature-extraction"], text))
            rerank: tuple[tuple[Call, ...], ...] = ()
            if documents:
                body = orjson.dumps({"query": question, "documents": documents})
                rerank = ((Call(ROUTES["rerank"], body),),)
            pairs = [{"question": question, "context": passage} for passage in passages]
            read = orjson.dumps({"inputs": pairs, "parameters": {"top_k": 1}})
            stages = (first, *rerank, (Call(ROUTES["question-answering"], read),))
            turns.append(ChatTurn("chat", b"", 1, tokens, stages=stages))
        return turns


def chat_workload(
    classify_bundle: Path,
    embed_bundle: Path,
    qa_bundle: Path,
    data_dir: Path,
    limit: int | None = None,
    rerank_bundle: Path | None = None,
    retrieved: int = RERANK_DOCUMENTS,
) -> ChatWorkload:
    """SQuAD dev questions, each with its own context and the next ``CHAT_PASSAGES - 1`` distinct
    ones (with ``rerank_bundle``: ``retrieved`` (``RERANK_DOCUMENTS``) reranked, the first
    ``CHAT_PASSAGES_RERANKED`` read); tokens count every row of every model (each window of each passage)."""
    examples = read_squad(data_dir / SQUAD_DEV, limit)
    contexts = list(dict.fromkeys(example.context for example in examples))
    position = {context: index for index, context in enumerate(contexts)}
    classify, embed, reader = (
        BundleTokens(classify_bundle),
        BundleTokens(embed_bundle),
        BundleTokens(qa_bundle),
    )
    reranker = BundleTokens(rerank_bundle) if rerank_bundle is not None else None
    retrieved = min(retrieved if reranker else CHAT_PASSAGES, len(contexts))
    questions: list[str] = []
    passages: list[list[str]] = []
    reranked: list[list[str]] = []
    tokens: list[int] = []
    for example in examples:
        start = position[example.context]
        candidates = [contexts[(start + offset) % len(contexts)] for offset in range(retrieved)]
        chosen = candidates[: CHAT_PASSAGES_RERANKED if reranker else CHAT_PASSAGES]
        rows = sum(classify.row_lengths(example.question)) + sum(embed.row_lengths(example.question))
        rows += sum(sum(reader.row_lengths(QAInput(example.question, passage))) for passage in chosen)
        if reranker is not None:
            rows += sum(sum(reranker.row_lengths(RerankPair(example.question, p))) for p in candidates)
            reranked.append(candidates)
        questions.append(example.question)
        passages.append(chosen)
        tokens.append(rows)
    return ChatWorkload("chat", "question-answering", questions, tokens, passages=passages, reranked=reranked)


def text_of_length(
    tokenizer: ThreadSafeTokenizer, words: Sequence[str], length: int, start: int = 0
) -> str | None:
    """A run of ``words`` that encodes to exactly ``length`` tokens (special tokens included).

    Token counts never shrink as words are added, so the shortest run reaching ``length`` is
    found by bisection; a run that overshoots (its last word is several tokens) is retried
    from the next starting word. None when no start within a few hundred words works.
    """
    for first in range(start, min(start + 300, len(words))):
        # Every word is at least one token, so ``length`` words are always enough.
        low, high = 1, min(len(words) - first, length)
        if tokenizer.count_tokens(" ".join(words[first : first + high])) < length:
            return None
        while low < high:
            middle = (low + high) // 2
            if tokenizer.count_tokens(" ".join(words[first : first + middle])) >= length:
                high = middle
            else:
                low = middle + 1
        text = " ".join(words[first : first + low])
        if tokenizer.count_tokens(text) == length:
            return text
    return None


def sweep_workloads(
    bundle: Path,
    data_dir: Path,
    lengths: Sequence[int],
    variants: int = 8,
    flops: EncoderFlops | None = None,
) -> tuple[list[Workload], list[int]]:
    """One workload per length the bundle accepts (``variants`` different texts each), and the
    lengths skipped because they exceed the bundle's limit."""
    counter = BundleTokens(bundle)
    if counter.manifest.task == "question-answering":
        raise ValueError("the length sweep takes a classification or embedding bundle")
    words = " ".join(read_sst2(data_dir / SST2_DEV).texts).split()
    workloads: list[Workload] = []
    skipped: list[int] = []
    for length in lengths:
        if length > counter.manifest.max_length or length < 3:
            skipped.append(length)
            continue
        texts: list[str] = []
        start = 0
        while len(texts) < variants and start < len(words):
            text = text_of_length(counter.tokenizer, words, length, start)
            if text is None:
                break
            texts.append(text)
            start += 97  # different texts, not shifted copies of one
        if not texts:
            skipped.append(length)
            continue
        per_item = [flops.per_sequence(length)] * len(texts) if flops else []
        workloads.append(
            Workload(f"sweep-{length}", counter.manifest.task, texts, [length] * len(texts), per_item)
        )
    return workloads, skipped
