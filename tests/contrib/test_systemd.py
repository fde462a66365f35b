"""contrib/systemd/snaptun.service: systemd-analyze accepts it, and it is sandboxed."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from snaptun.cli.main import build_parser
from tests.cli._procs import REPO

UNIT = REPO / "contrib" / "systemd" / "snaptun.service"
MAX_EXPOSURE = 20  # systemd-analyze security's scale times ten: 2.0 and below is "OK"


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (package systemd)")
    return tool


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's snaptun (verify wants it to exist)."""
    snaptun = Path(sys.executable).parent / "snaptun"
    assert snaptun.exists(), f"{snaptun} missing: run scripts/setup"
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/snaptun ", f"ExecStart={snaptun} ")
    assert str(snaptun) in text
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    done = subprocess.run(
        [tool, "verify", str(_runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on unknown keys and bad values, but reports them.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_rates_the_sandbox_ok(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    done = subprocess.run(
        [
            tool,
            "security",
            "--offline=yes",
            f"--threshold={MAX_EXPOSURE}",
            str(_runnable_copy(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr


def test_the_unit_sandboxes_the_gateway() -> None:
    settings = _settings()
    assert settings["DynamicUser"] == ["yes"]
    assert settings["StateDirectory"] == ["snaptun"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["ProtectHome"] == ["yes"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in settings["SystemCallFilter"]
    # Reload is SIGHUP, on which the gateway reads its token key files again.
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_execstart_is_a_valid_serve_command_on_the_state_directory() -> None:
    (exec_start,) = _settings()["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "snaptun"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.state_dir == "/var/lib/snaptun"  # StateDirectory=snaptun
    assert args.config == "/etc/snaptun/serve.toml"  # ConfigurationDirectory=snaptun
