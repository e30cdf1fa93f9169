"""The packages form layers that only point down, and the Python client stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Which of our packages each package may import (itself included).
ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "monitor": {"common", "monitor"},
    "simulator": {"common", "simulator"},
    "relay": {"common", "monitor", "simulator", "relay"},
    "clients": {"common", "clients"},
}


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every absolute module an import statement in ``path`` names, wherever it stands."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_every_package_has_a_rule() -> None:
    """A new top-level package is given its place in the layers."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "benchmarks"} == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package: str) -> None:
    """monitor and simulator use only common; relay uses them; clients use common alone."""
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in ALLOWED and module.split(".")[0] not in ALLOWED[package]
    ]
    assert wrong == []


def test_importing_the_python_client_loads_no_server_stack() -> None:
    """``import clients.client`` loads no Starlette, uvicorn, sqlite3 or pydantic-settings."""
    probe = (
        "import sys, clients.client\n"
        "heavy = ('starlette', 'uvicorn', 'sqlite3', '_sqlite3', 'pydantic_settings',"
        " 'monitor', 'relay', 'simulator')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
