"""The rooms' import rules (docs/architecture.md), checked on the source of every module.

The model side must be usable with neither HTTP nor the server installed, and the server must
not depend on the command line or the bench that are built on top of it. Every room imports the
others by their installed names (``distilserve.models``, ``distilserve.server``), never by the
folder names ``models``/``server``, which are not installed. An import anywhere in a module
counts, lazy ones inside functions included: they run too, just later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

HTTP_LIBRARIES = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop", "httpx", "requests", "aiohttp")
# The distilserve.* packages a room may import (all of distilserve for the command line's room).
OWN_PACKAGES: dict[str, tuple[str, ...]] = {
    "models": ("distilserve.models",),
    "server": ("distilserve.models", "distilserve.server"),
    "distilserve": ("distilserve",),
    # The examples are applications: they reach distilserve over HTTP only, as a user's would.
    "examples": (),
}
# Nothing the package installs may import the examples, which are not installed.
OTHER_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": (*HTTP_LIBRARIES, "examples"),
    "server": ("examples",),
    "distilserve": ("examples",),
    "examples": (),
}
# The folders' own names: importable in a checkout, but not what the wheel installs.
FOLDER_NAMES = ("models", "server")


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` in the file names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def forbidden(room: str, module: str) -> bool:
    top = module.split(".")[0]
    if top in FOLDER_NAMES or top in OTHER_FORBIDDEN[room]:
        return True
    return top == "distilserve" and not within(module, OWN_PACKAGES[room])


def room_files(room: str) -> list[Path]:
    # distilserve/models and distilserve/server are links to the other rooms: not walked twice.
    root = REPO_ROOT / room
    return sorted(path for path in root.rglob("*.py") if path.relative_to(root).parts[0] not in FOLDER_NAMES)


def violations(room: str) -> list[str]:
    return [
        f"{path.relative_to(REPO_ROOT)} imports {module}"
        for path in room_files(room)
        for module in sorted(imported_modules(path))
        if forbidden(room, module)
    ]


@pytest.mark.parametrize("room", sorted(OWN_PACKAGES))
def test_a_room_imports_only_what_it_may(room: str) -> None:
    assert violations(room) == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text(
        "def f():\n    from distilserve.server.app import build_app\n    import models.bundle\n"
    )
    assert imported_modules(module) == {"distilserve.server.app", "models.bundle"}
    assert forbidden("models", "distilserve.server.app") and forbidden("server", "models.bundle")
    assert forbidden("server", "distilserve.cli") and forbidden("models", "fastapi.routing")
    assert not forbidden("server", "distilserve.models.bundle")


def test_the_model_runtime_loads_no_http_or_server_module() -> None:
    """What ``import distilserve.models`` (the library API) pulls in, transitive imports included."""
    code = (
        "import sys, distilserve.models, distilserve.models.runtime, distilserve.models.tasks\n"
        "import distilserve.models.batching, distilserve.models.bundle\n"
        f"http = {HTTP_LIBRARIES!r}\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in http + ('models', 'server')\n"
        "    or (name.startswith('distilserve.') and not name.startswith('distilserve.models'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "[]"
