"""Every exception class of snaptun derives from SnaptunError and is drawn in errors.py."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import snaptun
from snaptun import errors
from snaptun.errors import SnaptunError

_PRIVATE_NOT_DRAWN = {"_Reject", "_Failure", "_Transient"}
"""Control-flow exceptions that never leave their module (named in the docstring)."""
_TREE_LINE = re.compile(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w+)(?:\s|$)")


def _package_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(snaptun.__path__, "snaptun."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("snaptun."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[key] for key in sorted(found)]


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, as drawn in the errors module's docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in doc.splitlines():
        match = _TREE_LINE.match(line)
        if match is None or (not stack and match.group(2) != "SnaptunError"):
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        del stack[depth:]
        name = match.group(2)
        assert name not in parents, f"{name} is drawn twice"
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


EXCEPTIONS = _package_exceptions()


def test_the_walk_finds_the_exceptions_of_every_layer() -> None:
    modules = {cls.__module__.split(".")[1] for cls in EXCEPTIONS}
    assert {"errors", "aio", "core", "scion", "gateway", "cli"} <= modules
    assert len(_drawn_tree()) >= 60


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_exception_derives_from_the_base(cls: type[BaseException]) -> None:
    assert issubclass(cls, SnaptunError)


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_exception_is_drawn_under_its_parent(cls: type[BaseException]) -> None:
    if cls.__name__ in _PRIVATE_NOT_DRAWN:
        assert cls.__name__.startswith("_")
        return
    tree = _drawn_tree()
    assert cls.__name__ in tree, f"{cls.__name__} is not drawn in snaptun.errors"
    parent = tree[cls.__name__]
    if parent is None:
        assert cls is SnaptunError
        return
    bases = {base.__name__ for base in cls.__bases__ if issubclass(base, SnaptunError)}
    assert parent in bases, f"{cls.__name__} is drawn under {parent}, derives from {bases}"


def test_every_drawn_name_is_a_class_of_the_package() -> None:
    names = {cls.__name__ for cls in EXCEPTIONS}
    assert set(_drawn_tree()) <= names
