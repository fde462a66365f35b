"""``snaptun ping``: arguments, statistics, and pings of a real gateway through a real tunnel."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from snaptun.cli._ping import PingStats, default_target, run_ping
from snaptun.cli.main import build_parser, main
from snaptun.core.addressing import EndhostAddress
from tests.cli._procs import SNAPTUN, _env
from tests.gateway._gateway import GatewayProcess, run_gateway, scrape

GATEWAY = "127.0.0.1:4433"
REPLY = re.compile(r"^40 bytes from 1-ff00:0:110,10\.0\.0\.1: scmp_seq=(\d+) time=(\d+\.\d{3}) ms$")


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["ping", *argv])


def test_defaults_and_flags() -> None:
    args = parse(GATEWAY, "--insecure", "--token", "T")
    assert (args.count, args.interval, args.timeout, args.size) == (4, 1.0, 2.0, 32)
    assert (args.to, args.desired) == (None, None)
    args = parse(GATEWAY, "--insecure", "--token-file", "t", "-c", "3", "-i", "0.2", "-W", "0.5")
    assert (args.count, args.interval, args.timeout, args.token_file) == (3, 0.2, 0.5, Path("t"))
    assert parse(GATEWAY, "--insecure", "--token", "T", "--to", "fd00::1").to.version == 6
    to = parse(GATEWAY, "--insecure", "--token", "T", "--to", "1-ff00:0:110,10.0.0.9").to
    assert to == EndhostAddress.parse("1-ff00:0:110,10.0.0.9")


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([GATEWAY, "--token", "T"], id="no-trust"),
        pytest.param([GATEWAY, "--insecure"], id="no-token"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "-c", "0"], id="count-0"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "-i", "0"], id="interval-0"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "-W", "-1"], id="negative-timeout"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "-s", "1201"], id="size"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "--to", "gateway"], id="bad-to"),
        pytest.param(["4433", "--insecure", "--token", "T"], id="bad-address"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ping", *argv])
    assert exited.value.code == 2
    assert "usage: snaptun ping" in capsys.readouterr().err


def test_an_unreadable_token_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ping", GATEWAY, "--insecure", "--token-file", str(tmp_path / "none")]) == 2
    assert "cannot read token file" in capsys.readouterr().err


def test_statistics_as_ping_prints_them() -> None:
    target = EndhostAddress.parse("1-ff00:0:110,10.0.0.1")
    stats = PingStats(sent=4, rtts=[0.001, 0.002, 0.003])
    assert stats.summary(target) == [
        "--- 1-ff00:0:110,10.0.0.1 ping statistics ---",
        "4 packets transmitted, 3 received, 25% packet loss",
        "rtt min/avg/max/mdev = 1.000/2.000/3.000/0.816 ms",  # mdev: sqrt(14/3 - 4)
    ]
    assert PingStats(sent=2).summary(target)[1:] == [
        "2 packets transmitted, 0 received, 100% packet loss"
    ]


@pytest.mark.parametrize(
    ("assigned", "target"),
    [
        ("1-ff00:0:110,10.0.0.187", "1-ff00:0:110,10.0.0.1"),
        ("1-ff00:0:110,10.20.3.7", "1-ff00:0:110,10.20.3.1"),
        ("2-ff00:0:220,fd00::5:6", "2-ff00:0:220,fd00::1"),
    ],
)
def test_the_default_target_is_the_first_host_of_the_24_or_64(assigned: str, target: str) -> None:
    assert default_target(EndhostAddress.parse(assigned)) == EndhostAddress.parse(target)


def _ping(gw: GatewayProcess, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "token"
    token.write_text(gw.token())
    argv = [
        *SNAPTUN,
        "ping",
        f"{gw.listen[0]}:{gw.listen[1]}",
        "--fingerprint",
        gw.fingerprint,
        "--token-file",
        str(token),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_env(), check=False)


def test_ping_of_a_real_gateway(tmp_path: Path) -> None:
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        done = _ping(gw, tmp_path, "-c", "3", "-i", "0.05")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith("PING 1-ff00:0:110,10.0.0.1 from 1-ff00:0:110,10.0.0.")
        replies = [REPLY.match(line) for line in lines[1:4]]
        assert [int(m.group(1)) for m in replies if m] == [0, 1, 2]
        assert lines[4:6] == [
            "--- 1-ff00:0:110,10.0.0.1 ping statistics ---",
            "3 packets transmitted, 3 received, 0% packet loss",
        ]
        assert lines[6].startswith("rtt min/avg/max/mdev = ")
        assert scrape(gw.metrics)["snaptun_gateway_scmp_echo_replies_total"] == 3

        # An address nobody answers: the request leaves for the border router, no reply.
        done = _ping(gw, tmp_path, "-c", "1", "-W", "0.3", "--to", "10.0.0.77")
        assert done.returncode == 1, done.stderr
        assert "1 packets transmitted, 0 received, 100% packet loss" in done.stdout
        assert scrape(gw.metrics)["snaptun_gateway_scmp_echo_replies_total"] == 3


def test_an_unreachable_gateway_exits_1(tmp_path: Path) -> None:
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        token = gw.token()
        fingerprint = gw.fingerprint
    argv = [*SNAPTUN, "ping", f"{gw.listen[0]}:{gw.listen[1]}", "--fingerprint", fingerprint]
    argv += ["--token", token, "--connect-timeout", "0.5", "-c", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_env(), check=False)
    assert done.returncode == 1
    assert "cannot open a tunnel" in done.stderr


def test_in_process_against_a_real_gateway(tmp_path: Path) -> None:
    """The same run inside the test process (so that coverage sees it), v6 too."""
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        address = f"{gw.listen[0]}:{gw.listen[1]}"
        args = parse(address, "--fingerprint", gw.fingerprint, "--token", gw.token())
        args.count, args.interval, args.timeout = 2, 0.05, 2.0
        args.desired = EndhostAddress.parse("1-ff00:0:110,fd00::7")
        out = io.StringIO()
        assert asyncio.run(run_ping(args, out)) == 0
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("PING 1-ff00:0:110,fd00::1 from 1-ff00:0:110,fd00::7")
        assert lines[1].startswith("40 bytes from 1-ff00:0:110,fd00::1: scmp_seq=0 time=")
        assert "2 packets transmitted, 2 received, 0% packet loss" in lines
