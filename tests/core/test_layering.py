"""The sans-I/O core never touches sockets, asyncio or the QUIC library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "snaptun"
FORBIDDEN = {"asyncio", "socket", "qh3", "uvloop", "selectors", "threading", "snaptun.aio"}
SANS_IO = sorted([*(SRC / "core").glob("*.py"), *(SRC / "scion").glob("*.py")])


@pytest.mark.parametrize("module", SANS_IO, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sans_io_module_imports_no_io(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    bad = {name for name in imported for f in FORBIDDEN if name == f or name.startswith(f + ".")}
    assert not bad, f"{module.name} imports {bad}"


def test_there_are_sans_io_modules_to_check() -> None:
    assert len(SANS_IO) >= 10
