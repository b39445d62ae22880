"""The ``distilserve`` command.

Every subcommand is described by a pydantic-settings class, and its command-line flags are
generated from that class, so each setting has exactly one definition, one ``--flag`` and one
``DISTILSERVE_*`` environment variable (flags win over the environment, which wins over the
defaults). Subcommands are imported lazily: ``distilserve serve`` never imports torch.

Exit status, the same for every subcommand:

- 0: done;
- 1: the run itself failed (a server that did not start or stopped on an error);
- 2: bad input: invalid flags or settings, a subcommand missing from this install, or a
  source, bundle or data file it cannot use (every ``DistilserveError`` a command reports).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from distilserve.log_config import configure_logging


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: where its settings class and its entry function live."""

    help: str
    module: str
    settings_class: str
    entry: str
    extra: str | None = None  # the pip extra its module's imports need beyond the runtime


COMMANDS: dict[str, Command] = {
    "serve": Command(
        "serve models over HTTP with dynamic batching", "distilserve.server.main", "ServerSettings", "run"
    ),
    "export": Command(
        "export a Hugging Face checkpoint to a verified int8 ONNX bundle",
        "distilserve.models.export.cli",
        "Settings",
        "run",
        "export",
    ),
    "build-default": Command(
        "build the default embedding bundle (all-MiniLM-L6-v2) into the cache",
        "distilserve.models.export.cli",
        "BuildDefaultSettings",
        "run_build_default",
        "export",
    ),
    "distill": Command(
        "fine-tune a teacher or distill a student (DistilBERT recipe)",
        "distilserve.models.distill.cli",
        "Settings",
        "run",
        "export",
    ),
    "eval": Command(
        "score a bundle on SST-2, SQuAD or STS-B",
        "distilserve.models.evaluation.cli",
        "Settings",
        "run",
        "export",
    ),
    # The load generator lives outside the runtime (server/); it is imported only when asked for.
    "bench": Command(
        "load-test a running server against its baselines",
        "distilserve.bench.cli",
        "Settings",
        "run",
        "bench",
    ),
}

POSITIONAL_KEY = "cli_positional"


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` → ``X``; other annotations unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _env_name(settings_class: type[BaseSettings], field_name: str) -> str:
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    return f"{prefix}{field_name}".upper()


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, SecretStr):
        return "unset"
    if default is None or default == []:
        return "unset"
    return str(default)


def _is_positional(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(POSITIONAL_KEY))


def add_settings_arguments(parser: argparse.ArgumentParser, settings_class: type[BaseSettings]) -> None:
    """One argument per settings field. Defaults stay with pydantic (argparse adds nothing unset)."""
    for name, field in settings_class.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        origin = typing.get_origin(annotation)
        description = (field.description or "").rstrip(".")
        help_text = f"{description} [env {_env_name(settings_class, name)}; default {_default_text(field)}]"
        help_text = help_text.replace("%", "%%")
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if origin is typing.Literal:
            kwargs["choices"] = [str(choice) for choice in typing.get_args(annotation)]
        if _is_positional(field):
            parser.add_argument(name, metavar=name.upper(), nargs="?", **kwargs)
            continue
        flag = "--" + name.replace("_", "-")
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is list:
            # Both `--x a b` and `--x a --x b` work.
            parser.add_argument(flag, nargs="+", action="extend", metavar="VALUE", **kwargs)
        else:
            metavar = "PATH" if annotation is Path else name.upper()
            parser.add_argument(flag, metavar=None if "choices" in kwargs else metavar, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilserve",
        description="Export, serve and distill distilled transformer models (int8 ONNX, dynamic batching).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparsers.add_parser(name, help=command.help, description=command.help, add_help=False)
    return parser


def _load(command: Command) -> tuple[type[BaseSettings], Callable[[Any], int]]:
    module = importlib.import_module(command.module)
    return getattr(module, command.settings_class), getattr(module, command.entry)


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "settings"
        lines.append(f"  {where}: {problem['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # The subcommand's own flags are only known once its module is imported, so parse twice:
    # first the command name, then its arguments with a parser built from its settings.
    known, rest = parser.parse_known_args(argv[:1])
    command = COMMANDS[known.command]
    try:
        settings_class, entry = _load(command)
    except ImportError as exc:
        needs = f'; it needs the {command.extra} extra: pip install "distilserve[{command.extra}]"'
        print(
            f"distilserve {known.command}: unavailable in this install ({exc})"
            + (needs if command.extra else ""),
            file=sys.stderr,
        )
        return 2
    sub_parser = argparse.ArgumentParser(prog=f"distilserve {known.command}", description=command.help)
    add_settings_arguments(sub_parser, settings_class)
    arguments = vars(sub_parser.parse_args(rest + argv[1:]))
    try:
        settings = settings_class(**arguments)
    except ValidationError as exc:
        print(
            f"distilserve {known.command}: invalid settings\n{_format_validation_error(exc)}", file=sys.stderr
        )
        return 2
    configure_logging(
        level=str(getattr(settings, "log_level", "info")),
        json_format=str(getattr(settings, "log_format", "json")) == "json",
    )
    return entry(settings)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
