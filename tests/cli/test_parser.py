"""Argument parsing of the ``snaptun`` command (no I/O)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from snaptun.cli._common import format_socket_address, parse_socket_address
from snaptun.cli.main import build_parser, client_options, main, server_options
from snaptun.core.addressing import EndhostAddress, IsdAs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4433", ("127.0.0.1", 4433)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_socket_address_round_trip(text: str, expected: tuple[str, int]) -> None:
    assert parse_socket_address(text) == expected
    assert format_socket_address(*expected) == text


@pytest.mark.parametrize(
    "text", ["127.0.0.1", ":80", "::1:80", "[::1]80", "[nope]:80", "1.2.3.4:x", "1.2.3.4:70000"]
)
def test_bad_socket_address(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_socket_address(text)


def test_echo_server_defaults() -> None:
    args = build_parser().parse_args(["echo-server", "--listen", "127.0.0.1:0"])
    options = server_options(args)
    assert (options.host, options.port) == ("127.0.0.1", 0)
    assert options.cert is None
    assert options.key is None
    assert options.token_validity == 60.0
    assert options.accept_token == "ANAPAYA"
    assert options.isd_as == IsdAs.parse("1-ff00:0:110")
    assert options.pools == (
        ipaddress.ip_network("10.0.0.0/24"),
        ipaddress.ip_network("fd00::/64"),
    )
    assert options.token_keys == ()
    assert options.echo is True
    assert options.max_lifetime is None
    assert options.mtu == 1452
    assert options.verbose == 0


def test_echo_server_flags() -> None:
    args = build_parser().parse_args(
        [
            "echo-server",
            "--listen=[::1]:4433",
            "--cert=c.pem",
            "--key=k.pem",
            "--token-validity=1.5",
            "--accept-token=T",
            "--isd-as=2-64496",
            "--token-key=a.pem",
            "--token-key=b.pem",
            "--pool=192.0.2.0/28",
            "--pool=2001:db8::/120",
            "--no-echo",
            "--max-lifetime=3",
            "--mtu=1300",
            "-vv",
        ]
    )
    options = server_options(args)
    assert (options.host, options.port) == ("::1", 4433)
    assert options.cert == Path("c.pem")
    assert options.key == Path("k.pem")
    assert options.token_validity == 1.5
    assert options.accept_token == "T"
    assert options.isd_as == IsdAs(2, 64496)
    assert options.token_keys == (Path("a.pem"), Path("b.pem"))
    assert [str(p) for p in options.pools] == ["192.0.2.0/28", "2001:db8::/120"]
    assert options.echo is False
    assert options.max_lifetime == 3.0
    assert options.mtu == 1300
    assert options.verbose == 2


def test_echo_client_defaults() -> None:
    args = build_parser().parse_args(["echo-client", "--connect", "127.0.0.1:1", "--insecure"])
    options = client_options(args)
    assert (options.host, options.port) == ("127.0.0.1", 1)
    assert options.insecure
    assert options.ca is None
    assert options.fingerprint is None
    assert options.token == "ANAPAYA"
    assert options.addresses == ()
    assert (options.count, options.size, options.echo_timeout, options.retries) == (
        10,
        100,
        1.0,
        2,
    )
    assert options.hold == 0.0
    assert options.renew_every is None
    assert options.renew_token is None
    assert not options.auto_renew
    assert options.expect_close is None
    assert options.mtu == 1452
    assert options.server_name == "localhost"


def test_echo_client_flags() -> None:
    fingerprint = "AB:" * 31 + "CD"
    args = build_parser().parse_args(
        [
            "echo-client",
            "--connect=[::1]:9",
            f"--fingerprint={fingerprint}",
            "--token=X",
            "--address=1-ff00:0:110,192.0.2.1",
            "--address=[1-ff00:0:110,2001:db8::1]",
            "--count=0",
            "--size=1414",
            "--echo-timeout-ms=250",
            "--retries=5",
            "--hold=2.5",
            "--renew-every=0.5",
            "--renew-token=Y",
            "--expect-close=4",
            "--mtu=1200",
            "--server-name=snap.example",
        ]
    )
    options = client_options(args)
    assert options.fingerprint == "ab" * 31 + "cd"
    assert options.addresses == (
        EndhostAddress.parse("1-ff00:0:110,192.0.2.1"),
        EndhostAddress.parse("1-ff00:0:110,2001:db8::1"),
    )
    assert (options.count, options.size, options.echo_timeout, options.retries) == (
        0,
        1414,
        0.25,
        5,
    )
    assert (options.hold, options.renew_every, options.renew_token) == (2.5, 0.5, "Y")
    assert options.expect_close == 4
    assert (options.mtu, options.server_name) == (1200, "snap.example")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["echo-server"],
        ["echo-server", "--listen", "nowhere"],
        ["echo-server", "--listen", "127.0.0.1:0", "--mtu", "1199"],
        ["echo-server", "--listen", "127.0.0.1:0", "--isd-as", "1-"],
        ["echo-server", "--listen", "127.0.0.1:0", "--pool", "10.0.0.1/24"],
        ["echo-server", "--listen", "127.0.0.1:0", "--cert", "c.pem"],
        ["echo-server", "--listen", "127.0.0.1:0", "--token-validity", "-1"],
        ["echo-client", "--connect", "127.0.0.1:1"],
        ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--ca", "c.pem"],
        ["echo-client", "--connect", "127.0.0.1:1", "--fingerprint", "abcd"],
        ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--address", "10.0.0.1"],
        ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--size", "7"],
        ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--count", "-1"],
        ["echo-client", "--connect", "127.0.0.1:1", "--insecure", "--renew-every", "0"],
        [
            "echo-client",
            "--connect",
            "127.0.0.1:1",
            "--insecure",
            "--auto-renew",
            "--renew-every",
            "1",
        ],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err
