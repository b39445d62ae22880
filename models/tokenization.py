"""Tokenization with Hugging Face `tokenizers`, safe to call from many threads.

A fast tokenizer's truncation and padding settings are mutable state on the Rust object, and
sharing one object between threads fails with "Already borrowed" as soon as one thread changes
a setting while another encodes. So every thread gets its own instances, one per truncation
setting, built once from the bundle's ``tokenizer.json`` and never changed afterwards.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Encoding, Tokenizer

# Tokenizer copies kept per thread (one per truncation setting in use).
MAX_CACHED_SETTINGS = 8

TruncationStrategy = Literal["longest_first", "only_first", "only_second"]
TruncationDirection = Literal["left", "right"]


@dataclass(frozen=True, slots=True)
class TruncationConfig:
    """One fixed truncation setting; ``max_length is None`` means no truncation."""

    max_length: int | None = None
    stride: int = 0
    strategy: TruncationStrategy = "longest_first"
    # Which end of a text loses its tokens: "right" keeps the beginning (the default), "left" the end.
    direction: TruncationDirection = "right"


class ThreadSafeTokenizer:
    """Encodes text with per-thread `tokenizers.Tokenizer` copies of one definition."""

    def __init__(self, definition: str) -> None:
        self._definition = definition
        self._local = threading.local()
        probe = Tokenizer.from_str(definition)
        # Padding is done by the batch assembler, per batch; the tokenizer never pads.
        probe.no_padding()
        probe.no_truncation()
        self.pad_token_id = _pad_token_id(probe)
        self.vocab_size = probe.get_vocab_size()

    @classmethod
    def from_file(cls, path: Path | str) -> ThreadSafeTokenizer:
        return cls(Path(path).read_text(encoding="utf-8"))

    def _tokenizer(self, truncation: TruncationConfig) -> Tokenizer:
        cache: OrderedDict[TruncationConfig, Tokenizer] | None = getattr(self._local, "by_config", None)
        if cache is None:
            cache = OrderedDict()
            self._local.by_config = cache
        tokenizer = cache.get(truncation)
        if tokenizer is not None:
            cache.move_to_end(truncation)
        else:
            # Clients choose some settings (a QA doc_stride), so the cache is bounded: the least
            # recently used copy goes when a new one would exceed the limit.
            if len(cache) >= MAX_CACHED_SETTINGS:
                cache.popitem(last=False)
            tokenizer = Tokenizer.from_str(self._definition)
            tokenizer.no_padding()
            if truncation.max_length is None:
                tokenizer.no_truncation()
            else:
                tokenizer.enable_truncation(
                    truncation.max_length,
                    stride=truncation.stride,
                    strategy=truncation.strategy,
                    direction=truncation.direction,
                )
            cache[truncation] = tokenizer
        return tokenizer

    def encode(
        self,
        text: str,
        pair: str | None = None,
        *,
        truncation: TruncationConfig = TruncationConfig(),
    ) -> Encoding:
        """Encode one text (or a pair) with special tokens. Overflow, if any, is in ``.overflowing``."""
        return self._tokenizer(truncation).encode(text, pair, add_special_tokens=True)

    def encode_batch(
        self,
        texts: Sequence[str] | Sequence[tuple[str, str]],
        *,
        truncation: TruncationConfig = TruncationConfig(),
    ) -> list[Encoding]:
        """Encode several texts, or several (text, pair) tuples, in one call (the same encodings as
        ``encode`` one by one)."""
        encodings: list[Encoding] = self._tokenizer(truncation).encode_batch(
            list(texts), add_special_tokens=True
        )
        return encodings

    def count_tokens(self, text: str) -> int:
        """Number of tokens, special tokens included, with no truncation."""
        return len(self._tokenizer(TruncationConfig()).encode(text, add_special_tokens=True).ids)


def _pad_token_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding is not None and "pad_id" in padding:
        return int(padding["pad_id"])
    for candidate in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(candidate)
        if token_id is not None:
            return int(token_id)
    return 0
