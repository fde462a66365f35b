"""``snaptun connect``: argument parsing, in-process runs, and one subprocess smoke test."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from snaptun.cli._connect import run_connect
from snaptun.cli.main import build_parser, main
from snaptun.core.addressing import EndhostAddress
from tests.aio.harness import TOKEN, running_server
from tests.cli._procs import REPO

GATEWAY = "127.0.0.1:4433"
FINGERPRINT = "ab" * 32


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["connect", *argv])


def test_defaults() -> None:
    args = parse(GATEWAY, "--insecure", "--token", "T")
    assert args.gateways == [("127.0.0.1", 4433)]
    assert args.insecure is True
    assert (args.ca, args.fingerprint) == (None, None)
    assert (args.token, args.token_file) == ("T", None)
    assert args.desired is None
    assert args.local == ("127.0.0.1", 0)
    assert args.forward_to is None
    assert args.server_name == "localhost"
    assert args.mtu == 1452
    assert args.renew_threshold == 300.0
    assert args.max_reconnects is None
    assert args.connect_timeout == 5.0
    assert args.verbose == 0


def test_all_flags() -> None:
    args = parse(
        "[::1]:4433",
        "--fingerprint",
        ":".join(["AB"] * 32),
        "--token-file",
        "/run/token",
        "--address",
        "1-ff00:0:110,10.0.0.7",
        "--local",
        "[::1]:5000",
        "--forward-to",
        "[::1]:6000",
        "--server-name",
        "snap.example",
        "--mtu",
        "1500",
        "--renew-threshold",
        "30",
        "--max-reconnects",
        "0",
        "--connect-timeout",
        "2.5",
        "-vv",
    )
    assert args.gateways == [("::1", 4433)]
    assert args.fingerprint == [FINGERPRINT]
    assert args.token_file == Path("/run/token")
    assert args.desired == EndhostAddress.parse("1-ff00:0:110,10.0.0.7")
    assert args.local == ("::1", 5000)
    assert args.forward_to == ("::1", 6000)
    assert (args.server_name, args.mtu, args.renew_threshold) == ("snap.example", 1500, 30.0)
    assert args.max_reconnects == 0
    assert args.connect_timeout == 2.5
    assert args.verbose == 2


def test_several_gateways_each_with_its_fingerprint() -> None:
    args = parse(
        GATEWAY,
        "[::1]:4433",
        "--fingerprint",
        "ab" * 32,
        "--fingerprint",
        "cd" * 32,
        "--token",
        "T",
    )
    assert args.gateways == [("127.0.0.1", 4433), ("::1", 4433)]
    assert args.fingerprint == ["ab" * 32, "cd" * 32]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            [GATEWAY, "127.0.0.1:4434", *["--fingerprint", FINGERPRINT] * 3],
            "one per gateway (2), not 3",
            id="fingerprint-count",
        ),
        pytest.param(
            [GATEWAY, "127.0.0.1:4434", GATEWAY, "--insecure"],
            "listed twice: 127.0.0.1:4433",
            id="duplicate",
        ),
    ],
)
def test_fleet_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["connect", *argv, "--token", "T"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage:" in captured.err
    assert message in captured.err


async def test_fleet_errors_in_process_are_an_error_line() -> None:
    out = io.StringIO()
    args = parse(GATEWAY, GATEWAY, "--insecure", "--token", "T")
    assert await asyncio.wait_for(run_connect(args, out), 5) == 1
    (error,) = records(out.getvalue())
    assert "listed twice" in error["error"]


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([GATEWAY, "--token", "T"], id="no-trust"),
        pytest.param([GATEWAY, "--insecure"], id="no-token"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "--token-file", "f"], id="two-tokens"),
        pytest.param([GATEWAY, "--insecure", "--ca", "c.pem", "--token", "T"], id="two-trusts"),
        pytest.param(["--insecure", "--token", "T"], id="no-address"),
        pytest.param(["4433", "--insecure", "--token", "T"], id="bad-address"),
        pytest.param([GATEWAY, "--fingerprint", "abc", "--token", "T"], id="bad-fingerprint"),
        pytest.param([GATEWAY, "--insecure", "--token", "T", "--mtu", "1199"], id="small-mtu"),
        pytest.param(
            [GATEWAY, "--insecure", "--token", "T", "--max-reconnects", "-1"], id="negative"
        ),
        pytest.param(
            [GATEWAY, "--insecure", "--token", "T", "--address", "10.0.0.7"], id="bad-endhost"
        ),
        pytest.param(
            [GATEWAY, "--insecure", "--token", "T", "--local", "127.0.0.1"], id="bad-local"
        ),
        pytest.param(
            [GATEWAY, "--insecure", "--token", "T", "--renew-threshold", "-1"], id="threshold"
        ),
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["connect", *argv])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage:" in captured.err


def records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_refused_token_exits_1_with_an_error_line(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness:
        out = io.StringIO()
        args = parse(f"127.0.0.1:{harness.port}", "--ca", str(certs[0]), "--token", "WRONG")
        code = await asyncio.wait_for(run_connect(args, out), 10)
    assert code == 1
    error, stopped = records(out.getvalue())
    assert error["event"] == "error"
    assert error["http_status"] == 401
    assert "refused" in error["error"]
    assert stopped["event"] == "stopped"
    assert stopped["exit_code"] == 1
    assert stopped["sent"] == 0


async def test_missing_token_file_exits_1_at_once(tmp_path: Path) -> None:
    out = io.StringIO()
    args = parse(GATEWAY, "--insecure", "--token-file", str(tmp_path / "absent"))
    assert await asyncio.wait_for(run_connect(args, out), 5) == 1
    error, stopped = records(out.getvalue())
    assert error["event"] == "error"
    assert "cannot read token file" in error["error"]
    assert stopped["connects"] == 0


async def test_max_reconnects_exhausted_exits_1(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness:
        port = harness.port
    out = io.StringIO()  # the server is gone: nobody answers on that port any more
    args = parse(
        f"127.0.0.1:{port}",
        "--ca",
        str(certs[0]),
        "--token",
        TOKEN,
        "--max-reconnects",
        "0",
        "--connect-timeout",
        "0.3",
    )
    assert await asyncio.wait_for(run_connect(args, out), 15) == 1
    error, stopped = records(out.getvalue())
    assert "gave up after 0 reconnect attempts" in error["error"]
    assert stopped["connect_failures"] == 1


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)


async def _line(stream: asyncio.StreamReader, timeout: float = 15.0) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), timeout)
    assert line, "snaptun connect exited"
    record: dict[str, Any] = json.loads(line)
    return record


async def test_subprocess_bridges_and_exits_0_on_sigterm(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    async with running_server(certs) as harness:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "snaptun.cli.main",
            "connect",
            f"127.0.0.1:{harness.port}",
            "--ca",
            str(certs[0]),
            "--token-file",
            str(token_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        transport: asyncio.DatagramTransport | None = None
        try:
            assert proc.stdout is not None
            connected = await _line(proc.stdout)
            assert connected["event"] == "connected"
            assert connected["assigned"][0]["isd_as"] == "1-ff00:0:110"
            assert connected["max_packet_size"] >= 1400
            assert connected["valid_until"] > 0
            host, _, port = connected["local"].rpartition(":")
            loop = asyncio.get_running_loop()
            transport, udp = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
            transport.sendto(b"through a real process", (host, int(port)))
            assert await asyncio.wait_for(udp.inbox.get(), 5) == b"through a real process"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            stopped = await _line(proc.stdout)
            assert stopped["event"] == "stopped"
            assert (stopped["exit_code"], stopped["sent"], stopped["received"]) == (0, 1, 1)
        finally:
            if transport is not None:
                transport.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
