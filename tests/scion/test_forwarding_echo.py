"""The forwarding step's one addition: SCMP Echo Requests to the gateway's own address."""

from __future__ import annotations

import ipaddress

import pytest

from snaptun.core.addressing import EndhostAddress
from snaptun.scion import (
    PLACEHOLDER_PATH,
    AddressHeader,
    NextHeader,
    ScionPacket,
    ScmpEchoReply,
    ScmpMessage,
    ScmpOther,
    ScmpParameterProblem,
    echo_request,
    encode,
    encode_scmp,
)
from snaptun.scion.forwarding import Route, RouteTable, Verdict
from tests.gateway._gateway import scion_udp

ME = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
ME6 = EndhostAddress.parse("1-ff00:0:110,fd00::5")
GATEWAY = EndhostAddress.parse("1-ff00:0:110,10.0.0.1")
GATEWAY6 = EndhostAddress.parse("1-ff00:0:110,fd00::1")
GATEWAY_ELSEWHERE = EndhostAddress.parse("2-ff00:0:220,10.0.0.1")
OTHER = EndhostAddress.parse("1-ff00:0:110,10.0.0.6")
HOSTS = [GATEWAY.ip, GATEWAY6.ip]


def _table(
    hosts: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> tuple[RouteTable[Route], Route, Route]:
    table: RouteTable[Route] = RouteTable(hosts)
    me, me6 = Route(ME), Route(ME6)
    table.add(me)
    table.add(me6)
    return table, me, me6


def _scmp(src: EndhostAddress, dst: EndhostAddress, message: ScmpMessage) -> bytes:
    address = AddressHeader.between(src, dst)
    return encode(
        ScionPacket(address, PLACEHOLDER_PATH, NextHeader.SCMP, encode_scmp(message, address))
    )


@pytest.mark.parametrize(
    ("source", "gateway"),
    [(ME, GATEWAY), (ME6, GATEWAY6), (ME, GATEWAY6), (ME6, GATEWAY)],
    ids=["v4", "v6", "v4-to-v6", "v6-to-v4"],
)
def test_an_echo_request_to_a_gateway_host_is_answered(
    source: EndhostAddress, gateway: EndhostAddress
) -> None:
    table, me, me6 = _table(HOSTS)
    route = me if source == ME else me6
    assert table.from_tunnel(route, echo_request(source, gateway, 9, 1, b"data")) is (
        Verdict.ECHO_REQUEST
    )


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(scion_udp(ME, GATEWAY, b"udp"), id="udp-to-gateway"),
        pytest.param(_scmp(ME, GATEWAY, ScmpEchoReply(9, 1)), id="echo-reply-to-gateway"),
        pytest.param(
            _scmp(ME, GATEWAY, ScmpParameterProblem(0, 0, b"")), id="scmp-error-to-gateway"
        ),
        pytest.param(_scmp(ME, GATEWAY, ScmpOther(128, 1, bytes(4))), id="echo-code-1"),
        pytest.param(_scmp(ME, GATEWAY, ScmpOther(128, 0, b"")), id="echo-too-short"),
        pytest.param(echo_request(ME, GATEWAY_ELSEWHERE, 9, 1), id="echo-to-another-as"),
        pytest.param(
            echo_request(ME, EndhostAddress.parse("1-ff00:0:110,10.0.0.99"), 9, 1),
            id="echo-to-an-unrouted-address",
        ),
    ],
)
def test_everything_else_is_decided_as_before(packet: bytes) -> None:
    table, me, _ = _table(HOSTS)
    assert table.from_tunnel(me, packet) is Verdict.UNDERLAY


def test_an_echo_request_to_a_tunnel_goes_to_that_tunnel() -> None:
    table, me, _ = _table(HOSTS)
    other = Route(OTHER)
    table.add(other)
    assert table.from_tunnel(me, echo_request(ME, OTHER, 9, 1)) is other


def test_without_gateway_hosts_nothing_is_answered() -> None:
    table, me, _ = _table([])
    assert table.from_tunnel(me, echo_request(ME, GATEWAY, 9, 1)) is Verdict.UNDERLAY


def test_the_packet_policy_comes_first() -> None:
    table, me, _ = _table(HOSTS)
    spoofed = echo_request(OTHER, GATEWAY, 9, 1)
    assert table.from_tunnel(me, spoofed) is Verdict.INVALID_SOURCE_ADDRESS
    table.remove(me)
    assert table.from_tunnel(me, echo_request(ME, GATEWAY, 9, 1)) is Verdict.DETACHED


def test_the_verdict_is_no_policy_violation() -> None:
    assert Verdict.ECHO_REQUEST.violation is None
    assert Verdict.ECHO_REQUEST.reason == "scmp_echo_request"
