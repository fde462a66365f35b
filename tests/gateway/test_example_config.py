"""examples/serve.toml: every setting, commented, read by the real loader, showing the defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from snaptun.cli.main import build_parser
from snaptun.gateway.config import GatewayConfig, resolve_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve.toml"
_SETTING = re.compile(r"^(#\s*)?([a-z_]+)\s*=")


def _load(path: Path | None, *, state_dir_flag: bool = True) -> GatewayConfig:
    argv = ["serve", "--state-dir", "/srv/snaptun-test"] if state_dir_flag else ["serve"]
    if path is not None:
        argv += ["--config", str(path)]
    return resolve_config(build_parser().parse_args(argv), {})


def _settings(text: str) -> tuple[set[str], set[str]]:
    """Keys set in the file, and keys shown commented out (``# cert = ...``)."""
    active: set[str] = set()
    commented: set[str] = set()
    for line in text.splitlines():
        found = _SETTING.match(line)
        if found:
            (commented if found.group(1) else active).add(found.group(2))
    return active, commented


def test_every_setting_appears() -> None:
    active, commented = _settings(EXAMPLE.read_text())
    known = {item.name for item in dataclasses.fields(GatewayConfig)}
    assert active | commented == known
    assert not active & commented


def test_the_example_is_read_by_the_loader_and_shows_the_defaults() -> None:
    assert _load(EXAMPLE) == _load(None)


def test_the_commented_out_settings_load_when_uncommented(tmp_path: Path) -> None:
    _, commented = _settings(EXAMPLE.read_text())
    text = re.sub(r"(?m)^#\s*([a-z_]+\s*=)", r"\1", EXAMPLE.read_text())
    (tmp_path / "serve.toml").write_text(text)
    config = _load(tmp_path / "serve.toml", state_dir_flag=False)
    default = _load(None, state_dir_flag=False)
    assert commented
    for key in commented:
        assert getattr(config, key) != getattr(default, key), key  # the file's value counted


def test_every_setting_has_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if not _SETTING.match(line) or line.startswith("#"):
            continue
        above = index - 1
        while above >= 0 and _SETTING.match(lines[above]) and not lines[above].startswith("#"):
            above -= 1  # settings grouped under one comment
        assert above >= 0, line
        assert lines[above].startswith("#"), f"{line!r} has no comment above it"
