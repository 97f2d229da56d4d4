"""The package's shape, as docs/architecture.md promises it: small modules with one job, no
private name reached for across modules, a docstring that says what each module is for.

The layers and the absence of import cycles are import-linter's contracts (pyproject.toml,
``lint-imports`` in .ci/run); this checks what import-linter does not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "isic2020"
MODULES = sorted(SRC.rglob("*.py"))
MAX_LINES = 500


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_over_500_lines(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{_rel(path)} has {n} lines: split it by job"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_every_module_says_what_it_is_for(path: Path) -> None:
    tree = ast.parse(path.read_text())
    if path.name == "__main__.py":
        return
    assert ast.get_docstring(tree), f"{_rel(path)} has no module docstring"


def test_no_private_name_is_imported_from_another_module() -> None:
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0] == "isic2020"
            ):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{_rel(path)}: {node.module}.{alias.name}")
    assert found == []
