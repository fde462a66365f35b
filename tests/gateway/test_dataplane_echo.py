"""The data plane answers pings of the gateway itself, within the tunnel's SCMP answer budget."""

from __future__ import annotations

from snaptun.core.addressing import EndhostAddress
from snaptun.scion import (
    PLACEHOLDER_PATH,
    ScmpEchoReply,
    ScmpParameterProblem,
    decode,
    decode_scmp,
    echo_request,
)
from tests.gateway._gateway import scion_udp
from tests.gateway.test_dataplane import GATEWAY, ME, OTHER, _Plane

SPOOFED = scion_udp(OTHER, GATEWAY, b"spoof")


def _replies(env: _Plane) -> list[ScmpEchoReply]:
    replies = []
    for sent in env.sender.sent:
        packet = decode(sent)
        message = decode_scmp(packet.payload, packet.address)  # verifies the checksum
        if isinstance(message, ScmpEchoReply):
            assert (packet.source, packet.destination) == (GATEWAY, ME)
            assert packet.path == PLACEHOLDER_PATH.reversed()
            replies.append(message)
    return replies


def test_a_ping_of_the_gateway_is_answered_into_its_tunnel_and_counted() -> None:
    env = _Plane(rate=10.0, burst=20)
    for seq in range(3):
        env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 77, seq, b"abc"))
    assert _replies(env) == [ScmpEchoReply(77, seq, b"abc") for seq in range(3)]
    assert env.sample("snaptun_gateway_scmp_echo_replies_total") == 3
    assert env.sample("snaptun_gateway_packets_total", {"direction": "tunnel_to_underlay"}) == 0
    assert not env.metrics.forwarding.drops  # not sent to the (absent) underlay either


def test_pings_share_the_answer_budget_with_scmp_errors() -> None:
    env = _Plane(rate=0.0, burst=3)
    env.plane.from_tunnel(env.port, SPOOFED)  # one error answer
    for seq in range(10):
        env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 1, seq))
    assert len(_replies(env)) == 2
    assert env.suppressed == 8
    assert env.sample("snaptun_gateway_scmp_echo_replies_total") == 2
    env.now += 1000.0  # rate 0: no refill
    env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 1, 99))
    assert len(env.sender.sent) == 3
    error = decode(env.sender.sent[0])
    assert isinstance(decode_scmp(error.payload, error.address), ScmpParameterProblem)


def test_the_budget_refills_at_the_rate() -> None:
    env = _Plane(rate=2.0, burst=1)
    for _ in range(5):
        env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 1, 1))
    env.now += 1.0
    for _ in range(5):
        env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 1, 2))
    assert [reply.sequence for reply in _replies(env)] == [1, 2]  # a refill caps at the burst
    assert env.suppressed == 8


def test_a_corrupt_ping_is_dropped_and_not_answered() -> None:
    env = _Plane(rate=10.0, burst=20)
    packet = bytearray(echo_request(ME, GATEWAY, 1, 1, b"abc"))
    packet[-1] ^= 0x01  # checksum no longer matches
    env.plane.from_tunnel(env.port, bytes(packet))
    assert env.sender.sent == []
    assert env.drops("invalid_scmp_echo") == 1
    assert env.sample("snaptun_gateway_scmp_echo_replies_total") == 0


def test_without_a_gateway_address_a_ping_goes_to_the_underlay() -> None:
    env = _Plane(rate=10.0, burst=20, gateway=False)
    env.plane.from_tunnel(env.port, echo_request(ME, GATEWAY, 1, 1))
    assert env.sender.sent == []
    assert env.drops("underlay_closed") == 1  # the underlay socket is not open here


def test_a_readdressed_tunnel_is_answered_at_its_new_address() -> None:
    env = _Plane(rate=10.0, burst=20)
    moved = EndhostAddress.parse("1-ff00:0:110,10.0.0.9")
    env.control.move_to(moved)
    env.plane.from_tunnel(env.port, echo_request(moved, GATEWAY, 1, 1))
    (reply,) = env.sender.sent
    assert decode(reply).destination == moved
