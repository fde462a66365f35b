"""The docs and sources point only at files the repository has."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
# A file (known extension) or a script (no dot); ``bench/gateway.SETTINGS`` is Python, not a path.
_REPO_PATH = re.compile(
    r"`((?:contrib|examples|docs|scripts|bench)/(?:[\w-]+/)*"
    r"(?:[\w-]+\.(?:md|py|toml|json|yml|yaml|service)|[\w-]+/?))`"
)


def test_no_section_references_to_a_protocol_file_outside_the_repository() -> None:
    """PROTOCOL.md lives outside the repository: say the rule instead of pointing at it."""
    texts = [*DOCS, *(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    offenders = [
        str(path.relative_to(REPO))
        for path in texts
        if path != Path(__file__).resolve() and "PROTOCOL.md" in path.read_text()
    ]
    assert offenders == []


def test_paths_named_in_the_docs_exist() -> None:
    named = {(doc.name, path) for doc in DOCS for path in _REPO_PATH.findall(doc.read_text())}
    assert named, "the docs name no repository files: the pattern is broken"
    missing = sorted((doc, path) for doc, path in named if not (REPO / path).exists())
    assert missing == []
