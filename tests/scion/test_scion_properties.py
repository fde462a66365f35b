"""Property tests: encode/decode round trips, and garbage yields only ScionDecodeError."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.scion import (
    EMPTY_PATH,
    AddressHeader,
    HopField,
    HostAddress,
    InfoField,
    RawHostAddress,
    RawPath,
    ScionDecodeError,
    ScionPacket,
    ScmpDestinationUnreachable,
    ScmpEchoReply,
    ScmpEchoRequest,
    ScmpMessage,
    ScmpOther,
    ScmpPacketTooBig,
    ScmpParameterProblem,
    ServiceAddress,
    StandardPath,
    UdpDatagram,
    build_parameter_problem,
    check_tunnel_packet,
    decode,
    decode_scmp,
    decode_udp,
    encode,
    encode_scmp,
    encode_udp,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

isd_as = st.builds(IsdAs, u16, st.integers(0, (1 << 48) - 1))
ipv4 = st.builds(ipaddress.IPv4Address, u32)
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, (1 << 128) - 1))
ip = st.one_of(ipv4, ipv6)
# Unassigned type/length combinations only (IPv4, IPv6 and service are typed).
raw_host = (
    st.tuples(st.integers(0, 3), st.sampled_from([4, 8, 12, 16]))
    .filter(lambda tl: tl not in {(0, 4), (0, 16), (1, 4)})
    .flatmap(
        lambda tl: st.builds(
            RawHostAddress, st.just(tl[0]), st.binary(min_size=tl[1], max_size=tl[1])
        )
    )
)
host: st.SearchStrategy[HostAddress] = st.one_of(
    ipv4, ipv6, st.builds(ServiceAddress, u16), raw_host
)
address = st.builds(AddressHeader, isd_as, isd_as, host, host)
endhost = st.builds(EndhostAddress, isd_as, ip)

info = st.builds(InfoField, st.booleans(), st.booleans(), u16, u32)
hop = st.builds(
    HopField, u8, u16, u16, st.binary(min_size=6, max_size=6), st.booleans(), st.booleans()
)


@st.composite
def standard_path(draw: st.DrawFn) -> StandardPath:
    lens = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    segments = [(draw(info), draw(st.lists(hop, min_size=n, max_size=n))) for n in lens]
    return StandardPath.from_segments(
        segments,
        curr_inf=draw(st.integers(0, len(lens) - 1)),
        curr_hf=draw(st.integers(0, sum(lens) - 1)),
    )


raw_path = st.builds(
    RawPath,
    st.integers(2, 0xFF),
    st.integers(0, 40).map(lambda n: bytes(range(n * 4 % 256))[: n * 4].ljust(n * 4, b"\x01")),
)
path = st.one_of(standard_path(), st.just(EMPTY_PATH), raw_path)
scion_packet = st.builds(
    ScionPacket,
    address,
    path,
    u8,
    st.binary(max_size=300),
    u8,
    st.integers(0, 0xFFFFF),
)

scmp_message: st.SearchStrategy[ScmpMessage] = st.one_of(
    st.builds(ScmpDestinationUnreachable, u8, st.binary(max_size=64)),
    st.builds(ScmpPacketTooBig, u16, st.binary(max_size=64), u8),
    st.builds(ScmpParameterProblem, u8, u16, st.binary(max_size=64)),
    st.builds(ScmpEchoRequest, u16, u16, st.binary(max_size=64)),
    st.builds(ScmpEchoReply, u16, u16, st.binary(max_size=64)),
    st.builds(
        ScmpOther, u8.filter(lambda t: t not in {1, 2, 4, 128, 129}), u8, st.binary(max_size=64)
    ),
)


@given(scion_packet)
def test_packet_round_trip(packet: ScionPacket) -> None:
    wire = encode(packet)
    assert decode(wire) == packet
    assert encode(decode(wire)) == wire


@given(address, u16, u16, st.binary(max_size=300))
def test_udp_round_trip(addr: AddressHeader, src: int, dst: int, payload: bytes) -> None:
    datagram = UdpDatagram(src, dst, payload)
    assert decode_udp(encode_udp(datagram, addr), addr) == datagram


@given(address, scmp_message)
def test_scmp_round_trip(addr: AddressHeader, message: ScmpMessage) -> None:
    assert decode_scmp(encode_scmp(message, addr), addr) == message


@given(scion_packet, endhost)
def test_policy_accepts_standard_packets_from_their_source(
    packet: ScionPacket, source: EndhostAddress
) -> None:
    packet = ScionPacket(
        AddressHeader(packet.address.dst_ia, source.isd_as, packet.address.dst_host, source.ip),
        packet.path,
        packet.next_header,
        packet.payload,
    )
    verdict = check_tunnel_packet(encode(packet), source)
    if isinstance(packet.path, StandardPath):
        assert verdict is None
    else:
        assert verdict is not None
        assert verdict.code == 20


@given(
    address,
    standard_path(),
    endhost,
    st.binary(max_size=300),
    st.one_of(st.binary(min_size=1, max_size=40), st.integers(1, 300)),
)
def test_a_wrong_amount_of_payload_is_invalid_packet_size_in_policy_and_codec(
    addr: AddressHeader,
    std: StandardPath,
    source: EndhostAddress,
    payload: bytes,
    change: bytes | int,
) -> None:
    """Bytes after PayloadLen, or fewer than PayloadLen: code 19 at the path, and no decode."""
    addr = AddressHeader(addr.dst_ia, source.isd_as, addr.dst_host, source.ip)
    wire = encode(ScionPacket(addr, std, 17, payload))
    assert check_tunnel_packet(wire, source) is None
    if isinstance(change, bytes):
        wrong = wire + change
    else:
        assume(change <= len(payload))  # cutting into the header is another violation
        wrong = wire[:-change]
    verdict = check_tunnel_packet(wrong, source)
    assert verdict is not None
    assert (verdict.code, verdict.pointer) == (19, 12 + len(addr.encode()))
    with pytest.raises(ScionDecodeError):
        decode(wrong)


def _decodes_from(data: bytes, assigned: EndhostAddress) -> bool:
    """What the policy must agree with: one whole packet from ``assigned`` on a standard path."""
    try:
        packet = decode(data)
    except ScionDecodeError:
        return False
    return packet.source == assigned and isinstance(packet.path, StandardPath)


def _garbage_ok(data: bytes, assigned: EndhostAddress) -> None:
    # The policy and the codec agree: no trailing bytes, no truncation, either way.
    assert (check_tunnel_packet(data, assigned) is None) == _decodes_from(data, assigned)
    answer = build_parameter_problem(data, 16, 0, assigned, assigned)
    assert len(answer) <= 1232
    parsed = decode(answer)
    assert isinstance(decode_scmp(parsed.payload, parsed.address), ScmpParameterProblem)
    for decoder in (decode_udp, decode_scmp):
        with contextlib.suppress(ScionDecodeError):
            decoder(data, parsed.address)


@given(st.binary(max_size=400), endhost)
def test_garbage_raises_only_scion_decode_error(data: bytes, assigned: EndhostAddress) -> None:
    _garbage_ok(data, assigned)


@given(scion_packet, st.data())
def test_mutated_packets_raise_only_scion_decode_error(
    packet: ScionPacket, data: st.DataObject
) -> None:
    wire = bytearray(encode(packet))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(u8)
    cut = data.draw(st.integers(0, len(wire)))
    source = packet.source or EndhostAddress(IsdAs(1, 1), ipaddress.IPv4Address(1))
    _garbage_ok(bytes(wire[:cut]), source)


@given(scion_packet, endhost, st.data())
def test_policy_passes_exactly_what_decodes_from_the_source(
    packet: ScionPacket, source: EndhostAddress, data: st.DataObject
) -> None:
    """Near-valid packets (few mutations, a cut or trailing bytes) meet policy and codec alike."""
    if data.draw(st.booleans()):  # often from the tunnel's own address, so some pass
        address = AddressHeader(
            packet.address.dst_ia, source.isd_as, packet.address.dst_host, source.ip
        )
        route = data.draw(st.one_of(standard_path(), path))  # mostly the standard path
        packet = ScionPacket(address, route, packet.next_header, packet.payload)
    wire = bytearray(encode(packet))
    for _ in range(data.draw(st.integers(0, 2))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(u8)
    end = data.draw(st.one_of(st.just(len(wire)), st.integers(0, len(wire))))
    raw = bytes(wire[:end]) + data.draw(st.one_of(st.just(b""), st.binary(max_size=8)))
    assert (check_tunnel_packet(raw, source) is None) == _decodes_from(raw, source)
