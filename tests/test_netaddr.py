"""snaptun.netaddr is the one parser of socket addresses; the CLI re-exports it."""

from __future__ import annotations

from snaptun import netaddr, tls
from snaptun.aio import quic
from snaptun.cli import _common


def test_cli_and_gateway_share_one_address_parser() -> None:
    assert _common.parse_socket_address is netaddr.parse_socket_address
    assert _common.format_socket_address is netaddr.format_socket_address


def test_the_quic_binding_reexports_the_fingerprint() -> None:
    assert quic.fingerprint_of is tls.fingerprint_of
