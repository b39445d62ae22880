"""Errors raised by the model side.

They carry no HTTP status: the server maps each class to one (see ``server/errors.py``).
"""

from __future__ import annotations

from pathlib import Path


class DistilserveError(Exception):
    """Base class of every error this package raises on purpose."""


class BundleError(DistilserveError):
    """A bundle is missing, corrupted or incompatible. Names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataError(DistilserveError, ValueError):
    """A data file (training or evaluation) that is missing or cannot be read as the options say."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class ExportError(DistilserveError):
    """An export could not be completed (bad source, failed parity, failed quantization)."""


class InputError(DistilserveError, ValueError):
    """An input the model cannot take: empty, wrong type, or too long with truncation off."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class InputTooLongError(InputError):
    """The input has more tokens than the model's limit and truncation was not allowed."""

    def __init__(self, token_count: int, limit: int, *, param: str | None = None) -> None:
        self.token_count = token_count
        self.limit = limit
        super().__init__(
            f"input has {token_count} tokens, more than the model's limit of {limit}; "
            "shorten it or allow truncation",
            param=param,
        )
