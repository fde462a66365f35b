"""Imports flow one way, checked transitively over the package's own modules.

The sans-I/O core (``core/``, ``scion/``) reaches, through everything it
imports inside snaptun, no sockets, no event loop, no threads, no QUIC
library, no clock (``time``), no ``os`` and no ``random``, and none of the
layers above it. ``aio/`` never reaches ``gateway/`` or ``cli/``, and
``gateway/`` never reaches ``cli/``. Every import statement counts, also one
inside a function or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "snaptun"
IO_AND_CLOCK = {
    "asyncio",
    "socket",
    "qh3",
    "uvloop",
    "selectors",
    "threading",
    "time",
    "os",
    "random",
}
ABOVE_CORE = {"snaptun.aio", "snaptun.gateway", "snaptun.cli"}


def _name_of(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name_of(path): path for path in PACKAGE.rglob("*.py")}


def _parents(name: str) -> list[str]:
    """The packages whose ``__init__`` runs when ``name`` is imported."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Every module ``name`` imports: the package's by full name, others by top-level name."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import"
            assert node.module is not None
            # ``from snaptun.core import state`` imports the module snaptun.core.state.
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "snaptun":
                found.add(target.split(".")[0])
            elif target in MODULES:
                found.update([target, *_parents(target)])
    found.discard(name)
    return frozenset(found)


def closure(name: str) -> dict[str, list[str]]:
    """Every module ``name`` reaches, each with one import chain that leads to it."""
    chains: dict[str, list[str]] = {name: [name]}
    todo = [name, *_parents(name)]
    for parent in _parents(name):
        chains[parent] = [name, parent]
    while todo:
        current = todo.pop()
        if current not in MODULES:
            continue
        for target in direct_imports(current):
            if target not in chains:
                chains[target] = [*chains[current], target]
                todo.append(target)
    return chains


def _offending(name: str, forbidden: set[str]) -> dict[str, str]:
    return {
        target: " -> ".join(chain)
        for target, chain in closure(name).items()
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    }


def _modules_under(*packages: str) -> list[str]:
    return sorted(n for n in MODULES if any(n == p or n.startswith(p + ".") for p in packages))


SANS_IO = _modules_under("snaptun.core", "snaptun.scion")


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_module_reaches_no_io_no_clock_no_upper_layer(module: str) -> None:
    bad = _offending(module, IO_AND_CLOCK | ABOVE_CORE)
    assert not bad, "\n".join(bad.values())


@pytest.mark.parametrize("module", _modules_under("snaptun.aio"))
def test_aio_module_reaches_neither_gateway_nor_cli(module: str) -> None:
    bad = _offending(module, {"snaptun.gateway", "snaptun.cli"})
    assert not bad, "\n".join(bad.values())


@pytest.mark.parametrize("module", _modules_under("snaptun.gateway"))
def test_gateway_module_reaches_no_cli(module: str) -> None:
    bad = _offending(module, {"snaptun.cli"})
    assert not bad, "\n".join(bad.values())


def test_there_are_modules_to_check() -> None:
    assert len(SANS_IO) >= 10
    assert len(_modules_under("snaptun.aio")) >= 5
    assert len(_modules_under("snaptun.gateway")) >= 5


def test_the_closure_is_transitive_and_names_the_chain() -> None:
    # The gateway reaches the QUIC library only through aio, and the closure sees it.
    assert "qh3" not in direct_imports("snaptun.gateway.service")
    chain = closure("snaptun.gateway.service")["qh3"]
    assert chain[0] == "snaptun.gateway.service"
    assert chain[-1] == "qh3"
    assert len(chain) >= 3
