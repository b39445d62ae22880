"""The tokenizer wrapper is safe to share between threads, whatever truncation each uses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tokenizers import Tokenizer

from distilserve.models.tokenization import MAX_CACHED_SETTINGS, ThreadSafeTokenizer, TruncationConfig
from tests.tiny_models import Arch, TinyTask, corpus


def test_threads_with_different_truncation_never_collide(
    tiny_checkpoints: dict[tuple[Arch, TinyTask], Path],
) -> None:
    folder = tiny_checkpoints[("bert", "feature-extraction")]
    shared = ThreadSafeTokenizer.from_file(folder / "tokenizer.json")
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = corpus(200, seed=3)

    def work(index: int) -> tuple[list[int], list[int]]:
        limit = 4 + index % 9
        truncated = shared.encode(texts[index], truncation=TruncationConfig(max_length=limit)).ids
        full = shared.encode(texts[index]).ids
        return truncated, full

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(200)))  # a shared fast tokenizer raises "Already borrowed"
    for index, (truncated, full) in enumerate(results):
        expected = reference.encode(texts[index]).ids
        assert full == expected
        limit = 4 + index % 9
        assert len(truncated) == min(limit, len(expected))
        assert truncated[-1] == expected[-1]  # [SEP] is kept when truncating


def test_the_per_thread_cache_is_bounded(tiny_checkpoints: dict[tuple[Arch, TinyTask], Path]) -> None:
    shared = ThreadSafeTokenizer.from_file(
        tiny_checkpoints[("bert", "feature-extraction")] / "tokenizer.json"
    )
    for stride in range(MAX_CACHED_SETTINGS * 3):
        shared.encode("a question", "a long context " * 30, truncation=TruncationConfig(64, stride=stride))
    assert len(shared._local.by_config) == MAX_CACHED_SETTINGS
    assert shared.pad_token_id == 0 and shared.vocab_size > 100
