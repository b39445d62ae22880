"""Process memory: what this process holds (RSS), what its container allows (the cgroup limit),
and handing freed heap pages back to the system (glibc's ``malloc_trim``).

Why a fixed mmap threshold (``map_large_blocks``): ONNX Runtime's CPU arena, shrunk by a release
(``OnnxSession.release_memory``), frees its extra chunks to glibc, and glibc keeps freed memory in
the process unless the blocks were mapped on their own, which its dynamic threshold stops doing
for blocks under 32 MiB. Measured on the three default models (issue 25): arena alone grows to
about 1.1 GB; arena shrink alone about 530 MB and still rising; arena shrink with large blocks
mapped, or with a ``malloc_trim`` after each run, stays flat at about 150 MB. The fixed threshold
costs nothing per run; what a release costs is the next large batch mapping its memory again
(108,000 page faults for the reader's 21-window batch), which is why the server releases when a
model is idle, not after every batch (``distilserve.server.batching``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

# cgroup v1 reports "no limit" as a huge number (the largest page-aligned signed 64-bit value).
_CGROUP_V1_UNLIMITED = 1 << 60
# A bundle whose manifest does not say: BERT-base's width (an overestimate for distilled models).
DEFAULT_HIDDEN_SIZE = 768


@cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


# glibc's mallopt parameter: blocks of at least this many bytes get their own mapping.
_M_MMAP_THRESHOLD = -3
# 256 KiB: every arena chunk and activation tensor of a batch is far larger; tokens, strings and
# small arrays stay on the heap, as before.
MMAP_THRESHOLD_BYTES = 256 * 1024


@cache
def map_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give every C allocation of at least ``threshold`` bytes its own mapping, returned to the
    system when freed, and stop glibc from raising that threshold as it does by default (up to
    32 MiB, after which big freed blocks stay in the heap for good). Process-wide, once; False
    where the C library has no ``mallopt``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def trim_heap() -> bool:
    """Return the C heap's free pages to the system; False where the C library cannot."""
    function = _libc_malloc_trim()
    if function is None:
        return False
    function(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident set size, from ``/proc/self/statm``; None off Linux."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup in bytes (v2 ``memory.max``, else v1
    ``memory.limit_in_bytes``), or None when none is set."""
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            limit = int(text)
        except ValueError:
            logger.warning("unreadable cgroup memory limit", extra={"path": str(path), "value": text})
            return None
        return None if limit <= 0 or limit >= _CGROUP_V1_UNLIMITED else limit
    return None


@dataclass(frozen=True, slots=True)
class BatchMemoryEstimate:
    """An upper estimate of the memory ONNX Runtime needs, beyond the weights, to run one batch of
    an encoder: per row, a term linear in its padded width (hidden activations) and a term
    quadratic in it (attention scores, one width x width matrix per head).

    The factors are fitted, with a margin, to the peak RSS of single runs of the three default
    models (int8, hidden 384, 12 heads; issue 25): 21 x 384 question-answering rows peaked at
    415 MiB (estimated 520), 32 x 256 embedding rows at 314 MiB (384), 32 x 128 classification
    rows at 109 MiB (120). The head count is taken as ``hidden_size / 32`` (MiniLM's; BERT-base's
    64-wide heads make it an overestimate, which is the safe side).
    """

    hidden_size: int = DEFAULT_HIDDEN_SIZE

    # fp32 bytes per value, times live copies (QKV, FFN intermediate, int8 scaling copies).
    LINEAR_FACTOR = 4 * 8
    QUADRATIC_FACTOR = 4 * 3
    HEAD_WIDTH = 32

    def row_bytes(self, width: int) -> int:
        heads = max(self.hidden_size // self.HEAD_WIDTH, 1)
        return width * self.hidden_size * self.LINEAR_FACTOR + heads * width * width * self.QUADRATIC_FACTOR

    def batch_bytes(self, rows: int, width: int) -> int:
        return rows * self.row_bytes(width)

    def rows_within(self, limit_bytes: int, width: int) -> int:
        """Most rows of ``width`` padded tokens whose batch fits in ``limit_bytes`` (maybe 0)."""
        return limit_bytes // max(self.row_bytes(width), 1)
