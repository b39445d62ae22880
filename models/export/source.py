"""What an export starts from: a local checkpoint folder or a Hugging Face Hub id.

Everything here reads files only (config, sentence-transformers metadata, weights hashes);
loading the model itself is the exporter's job. Hub files are fetched through
``transformers.utils.cached_file`` with the requested ``revision``, so a hub export records and
uses the same pinned files as ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilserve.models.bundle import Pooling, Task, sha256_file
from distilserve.models.errors import ExportError

# "name" or "org/name", as the Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")

# Checkpoint weights, most preferred first (the order ``from_pretrained`` looks for them).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True, slots=True)
class Source:
    """A resolved SOURCE: ``ref`` is what ``from_pretrained`` takes."""

    ref: str
    local_dir: Path | None
    revision: str | None

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    def fetch(self, name: str) -> Path | None:
        """The path of one file of the checkpoint, or None when it has no such file."""
        if self.local_dir is not None:
            path = self.local_dir / name
            return path if path.is_file() else None
        from transformers.utils.hub import cached_file

        try:
            found = cached_file(
                self.ref,
                name,
                revision=self.revision,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError as exc:
            raise ExportError(f"{self.ref}: cannot fetch {name} from the Hugging Face Hub ({exc})") from exc
        return Path(found) if found else None

    def read_json(self, name: str) -> Any | None:
        path = self.fetch(name)
        if path is None:
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path}: cannot read JSON ({exc})") from exc


def resolve_source(source: str, revision: str | None = None) -> Source:
    """Check SOURCE: an existing checkpoint folder, or something that can only be a hub id."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{source}: not a folder; SOURCE must be a checkpoint folder or a hub id")
        if not (path / "config.json").is_file():
            raise ExportError(
                f"{path}: no config.json in this folder, so it is not a Hugging Face checkpoint "
                "(a folder written by save_pretrained, or a sentence-transformers model folder)"
            )
        return Source(ref=str(path.resolve()), local_dir=path.resolve(), revision=revision)
    if not HUB_ID.fullmatch(source) or source.startswith((".", "~")):
        raise ExportError(f"{source}: folder does not exist (and it is not a Hugging Face Hub id either)")
    return Source(ref=source, local_dir=None, revision=revision)


def infer_task(architectures: Sequence[str] | None, *, sentence_transformers: bool = False) -> Task:
    """The export task of a checkpoint, from its config's ``architectures``.

    An architecture ending with a task's ``TaskSpec.architecture_suffix`` is that task
    (``...ForSequenceClassification`` text classification, ``...ForQuestionAnswering`` question
    answering); a bare encoder (``BertModel``, ``DistilBertModel``) or a sentence-transformers
    folder is the ``base_encoder`` task (feature extraction). Anything else needs an explicit task.
    """
    from distilserve.models.tasks import TASK_SPECS

    names = list(architectures or [])
    for name in names:
        for spec in TASK_SPECS.values():
            if spec.architecture_suffix and name.endswith(spec.architecture_suffix):
                return spec.name
    if sentence_transformers or any(_is_base_model(name) for name in names):
        for spec in TASK_SPECS.values():
            if spec.base_encoder:
                return spec.name
    found = ", ".join(names) if names else "none listed in config.json"
    hints = [spec.architecture_hint for spec in TASK_SPECS.values() if spec.architecture_hint]
    exported = ", ".join(hints[:-1]) + " and " + hints[-1] if len(hints) > 1 else "".join(hints)
    raise ExportError(
        f"cannot infer the task from the architectures ({found}): distilserve exports "
        f"{exported}; pass --task to choose one"
    )


def _is_base_model(architecture: str) -> bool:
    # "BertModel", "DistilBertModel"; not "BertForMaskedLM" or "BertLMHeadModel" (heads).
    return architecture.endswith("Model") and "For" not in architecture and "LMHead" not in architecture


@dataclass(frozen=True, slots=True)
class SentenceTransformersInfo:
    """What a sentence-transformers folder says about serving its embeddings."""

    pooling: Pooling
    normalize: bool
    max_seq_length: int | None


def sentence_transformers_info(source: Source) -> SentenceTransformersInfo | None:
    """Pooling, normalization and length limit from ``modules.json`` and friends; None if absent.

    Raises ``ExportError`` for modules the runtime cannot reproduce (a Dense projection, max
    pooling...), since serving without them would silently give different embeddings.
    """
    modules = source.read_json("modules.json")
    if modules is None:
        return None
    if not isinstance(modules, list):
        raise ExportError(f"{source.ref}: modules.json is not a list of modules")
    pooling: Pooling = "mean"
    normalize = False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        path = str(module.get("path", ""))
        if kind == "Transformer":
            if path not in ("", "."):
                raise ExportError(
                    f"{source.ref}: the transformer lives in the subfolder {path!r} (an old "
                    "sentence-transformers layout); re-save the model with a current sentence-transformers"
                )
        elif kind == "Pooling":
            pooling = _pooling_mode(source, f"{path}/config.json" if path else "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ExportError(
                f"{source.ref}: sentence-transformers module {kind!r} is not supported by the runtime "
                "(it serves a transformer, mean or CLS pooling and L2 normalization)"
            )
    settings = source.read_json("sentence_bert_config.json") or {}
    max_seq_length = settings.get("max_seq_length")
    return SentenceTransformersInfo(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
    )


def _pooling_mode(source: Source, name: str) -> Pooling:
    config = source.read_json(name)
    if config is None:
        return "mean"
    enabled = sorted(key for key, value in config.items() if key.startswith("pooling_mode_") and value)
    if enabled == ["pooling_mode_mean_tokens"]:
        return "mean"
    if enabled == ["pooling_mode_cls_token"]:
        return "cls"
    raise ExportError(
        f"{source.ref}: pooling {enabled} in {name} is not supported (the runtime does mean or CLS pooling)"
    )


def weight_files(source: Source) -> list[Path]:
    """The checkpoint's weights files (one, or every shard of an index), as from_pretrained picks them."""
    for name in WEIGHT_FILES:
        path = source.fetch(name)
        if path is not None:
            return [path]
    for name in WEIGHT_INDEXES:
        index = source.read_json(name)
        if index is None:
            continue
        shards = sorted(set(index.get("weight_map", {}).values()))
        paths = [source.fetch(shard) for shard in shards]
        missing = [shard for shard, path in zip(shards, paths, strict=True) if path is None]
        if missing or not paths:
            raise ExportError(f"{source.ref}: {name} lists shards that are missing: {missing}")
        return [path for path in paths if path is not None]
    raise ExportError(
        f"{source.ref}: no weights found (model.safetensors, pytorch_model.bin or a sharded index)"
    )


def weights_sha256(paths: Sequence[Path]) -> str:
    """sha256 of a single weights file (the digest the Hub shows for it); for shards, the
    sha256 of ``sha256sum``-style lines, one per shard, in name order."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = "".join(f"{sha256_file(path)}  {path.name}\n" for path in sorted(paths, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()
