"""Errors at the command line say what happened: version, usage, closed stdout, busy ports."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from snaptun.cli.main import main
from snaptun.core.tokens import generate_signing_key
from snaptun.keyfiles import write_private_key
from tests.cli._procs import SNAPTUN, _env

RUN_TIMEOUT = 30.0


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"snaptun {metadata.version('snaptun')}\n"


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["serve", "--bogus"], "usage: snaptun serve "),
        (["token", "issue", "--bogus", "x"], "usage: snaptun token issue "),
        (
            ["connect", "127.0.0.1:1", "--insecure", "--token", "T", "--bogus"],
            "usage: snaptun connect ",
        ),
        (
            ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--bogus"],
            "usage: snaptun echo-client ",
        ),
    ],
)
def test_an_unknown_flag_shows_the_subcommands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    command = usage.removeprefix("usage: ").strip()
    assert f"{command}: error: unrecognized arguments: --bogus" in err


def _closed_stdout(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``snaptun`` with its stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*SNAPTUN, *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=RUN_TIMEOUT,
            env=_env(),
            check=False,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["token", "print-config"])
def test_a_closed_stdout_ends_quietly(tmp_path: Path, command: str) -> None:
    key = tmp_path / "signing-key.pem"
    write_private_key(generate_signing_key(), key)
    argv = (
        ["token", "issue", "--key", str(key)]
        if command == "token"
        else ["serve", "--state-dir", str(tmp_path), "--print-config"]
    )
    done = _closed_stdout(argv)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


@pytest.fixture
def busy_ports() -> Iterator[tuple[int, int]]:
    """A bound UDP port and a listening TCP port on loopback, held during the test."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        yield udp.getsockname()[1], tcp.getsockname()[1]
    finally:
        udp.close()
        tcp.close()


@pytest.mark.parametrize("flag", ["--listen", "--underlay-bind", "--metrics"])
def test_a_bind_failure_names_the_setting_and_address(
    tmp_path: Path, busy_ports: tuple[int, int], flag: str
) -> None:
    udp_port, tcp_port = busy_ports
    busy = f"127.0.0.1:{tcp_port if flag == '--metrics' else udp_port}"
    settings = {
        "--listen": "127.0.0.1:0",
        "--metrics": "127.0.0.1:0",
        "--underlay-bind": "127.0.0.1:0",
    }
    settings[flag] = busy
    argv = [
        *SNAPTUN,
        "serve",
        "--state-dir",
        str(tmp_path),
        "--underlay-next-hop",
        "127.0.0.1:9",
        *(item for pair in settings.items() for item in pair),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env(), check=False
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "generated" not in line]
    assert lines == [f"snaptun serve: {flag} {busy}: address already in use"], done.stderr
    assert done.stdout == ""  # never got to "listening"
