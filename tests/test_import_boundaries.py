"""The rooms' import rules (docs/architecture.md), checked on the source of every module.

The model side must be usable with neither HTTP nor the server installed, and the server must
not depend on the command line or the bench that are built on top of it. An import anywhere in
a module counts, lazy ones inside functions included: they run too, just later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HTTP_LIBRARIES = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "httpx", "requests", "aiohttp")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("server", "distilserve", "examples", *HTTP_LIBRARIES),
    "server": ("distilserve", "examples"),
    "distilserve": ("examples",),
    # The examples are applications: they reach distilserve over HTTP only, as a user's would.
    "examples": ("models", "server", "distilserve"),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` in the file names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                found.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_room_imports_only_what_it_may(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from server.app import build_app\n    import fastapi.routing\n")
    assert imported_modules(module) == {"server.app", "fastapi.routing"}


def test_the_model_runtime_loads_no_http_or_server_module() -> None:
    """What ``import models`` (the library API) actually pulls in, transitive imports included."""
    forbidden = ("server", "distilserve", *HTTP_LIBRARIES)
    code = (
        "import sys, models, models.runtime, models.tasks, models.batching, models.bundle\n"
        f"print(sorted(name for name in sys.modules if name.split('.')[0] in {forbidden!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "[]"
