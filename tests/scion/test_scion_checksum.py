"""UDP and SCMP checksums over the SCION pseudo-header, checked with an independent RFC 1071."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.addressing import IsdAs
from snaptun.scion import (
    AddressHeader,
    DecodePart,
    ScionDecodeError,
    ScmpDestinationUnreachable,
    ScmpEchoReply,
    ScmpEchoRequest,
    ScmpOther,
    ScmpPacketTooBig,
    ScmpParameterProblem,
    UdpDatagram,
    decode_scmp,
    decode_udp,
    encode_scmp,
    encode_udp,
    internet_checksum,
    scmp_is_error,
)

from ._wire import be, isd_as, pseudo_header, rfc1071

AS_110 = 0xFF00_0000_0110
AS_220 = 0xFF00_0000_0220

ADDRESS = AddressHeader(
    dst_ia=IsdAs(2, AS_220),
    src_ia=IsdAs(1, AS_110),
    dst_host=ipaddress.IPv6Address("2001:db8::53"),
    src_host=ipaddress.IPv4Address("10.0.0.2"),
)
ADDRESS_BYTES = (
    isd_as(2, AS_220)  # DstISD, DstAS
    + isd_as(1, AS_110)  # SrcISD, SrcAS
    + ipaddress.IPv6Address("2001:db8::53").packed  # DstHostAddr
    + bytes([10, 0, 0, 2])  # SrcHostAddr
)


def test_address_header_bytes() -> None:
    assert ADDRESS.encode() == ADDRESS_BYTES


def test_udp_vector() -> None:
    payload = b"odd-length payload!"
    length = 8 + len(payload)
    header_zero_sum = be(40000, 2) + be(53, 2) + be(length, 2) + be(0, 2)  # ports, Length, Checksum
    checksum = rfc1071(pseudo_header(ADDRESS_BYTES, length, 17) + header_zero_sum + payload)
    expected = header_zero_sum[:6] + be(checksum, 2) + payload

    assert encode_udp(UdpDatagram(40000, 53, payload), ADDRESS) == expected
    assert decode_udp(expected, ADDRESS) == UdpDatagram(40000, 53, payload)


def test_udp_checksum_mismatch_and_length() -> None:
    good = encode_udp(UdpDatagram(1, 2, b"data"), ADDRESS)
    corrupted = good[:-1] + bytes([good[-1] ^ 0x01])
    with pytest.raises(ScionDecodeError, match="checksum") as info:
        decode_udp(corrupted, ADDRESS)
    assert info.value.part is DecodePart.UDP
    assert decode_udp(corrupted, ADDRESS, verify=False).payload == b"dat`"
    other = AddressHeader(ADDRESS.dst_ia, IsdAs(1, 1), ADDRESS.dst_host, ADDRESS.src_host)
    with pytest.raises(ScionDecodeError, match="checksum"):
        decode_udp(good, other)
    with pytest.raises(ScionDecodeError, match="Length"):
        decode_udp(good + b"x", ADDRESS)
    with pytest.raises(ScionDecodeError, match="shorter"):
        decode_udp(good[:7], ADDRESS)
    with pytest.raises(ValueError, match="port"):
        encode_udp(UdpDatagram(70000, 2, b""), ADDRESS)


def test_scmp_echo_vector() -> None:
    data = b"ping"
    message = be(128, 1) + be(0, 1) + be(0, 2) + be(0xBEEF, 2) + be(7, 2) + data  # Type..Seq
    checksum = rfc1071(pseudo_header(ADDRESS_BYTES, len(message), 202) + message)
    expected = message[:2] + be(checksum, 2) + message[4:]

    assert encode_scmp(ScmpEchoRequest(0xBEEF, 7, data), ADDRESS) == expected
    assert decode_scmp(expected, ADDRESS) == ScmpEchoRequest(0xBEEF, 7, data)


def test_scmp_parameter_problem_vector() -> None:
    quote = bytes(range(33))
    # Type 4, Code 33, Checksum, Reserved, Pointer 20, quoted packet.
    message = be(4, 1) + be(33, 1) + be(0, 2) + be(0, 2) + be(20, 2) + quote
    checksum = rfc1071(pseudo_header(ADDRESS_BYTES, len(message), 202) + message)
    expected = message[:2] + be(checksum, 2) + message[4:]

    assert encode_scmp(ScmpParameterProblem(33, 20, quote), ADDRESS) == expected
    assert decode_scmp(expected, ADDRESS) == ScmpParameterProblem(33, 20, quote)


@pytest.mark.parametrize(
    "message",
    [
        ScmpDestinationUnreachable(4, b"quoted"),
        ScmpPacketTooBig(1280, b"quoted"),
        ScmpParameterProblem(48, 36, b""),
        ScmpEchoRequest(1, 2, b""),
        ScmpEchoReply(1, 2, b"pong"),
        ScmpOther(5, 0, bytes(16)),
        ScmpOther(130, 0, bytes(20)),
        ScmpOther(128, 3, b"\x00\x01\x00\x02"),
    ],
)
def test_scmp_round_trip(
    message: ScmpDestinationUnreachable
    | ScmpPacketTooBig
    | ScmpParameterProblem
    | ScmpEchoRequest
    | ScmpEchoReply
    | ScmpOther,
) -> None:
    wire = encode_scmp(message, ADDRESS)
    assert rfc1071(pseudo_header(ADDRESS_BYTES, len(wire), 202) + wire) == 0
    assert decode_scmp(wire, ADDRESS) == message


def test_scmp_errors() -> None:
    good = encode_scmp(ScmpEchoReply(1, 2, b"x"), ADDRESS)
    with pytest.raises(ScionDecodeError, match="checksum") as info:
        decode_scmp(good[:-1] + b"y", ADDRESS)
    assert info.value.part is DecodePart.SCMP
    with pytest.raises(ScionDecodeError, match="shorter"):
        decode_scmp(good[:3], ADDRESS, verify=False)
    with pytest.raises(ScionDecodeError, match="needs 8 bytes"):
        decode_scmp(good[:6], ADDRESS, verify=False)
    with pytest.raises(ValueError, match="out of range"):
        encode_scmp(ScmpParameterProblem(16, 1 << 16, b""), ADDRESS)


def test_scmp_is_error() -> None:
    assert scmp_is_error(ScmpParameterProblem(16, 0, b""))
    assert scmp_is_error(ScmpOther(6, 0, b""))
    assert not scmp_is_error(ScmpEchoRequest(0, 0))
    assert not scmp_is_error(ScmpOther(131, 0, b""))


def test_internet_checksum_edge_cases() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(7)) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0
    assert internet_checksum(b"\x01") == rfc1071(b"\x01")


@given(st.binary(max_size=512))
def test_internet_checksum_matches_rfc1071(data: bytes) -> None:
    assert internet_checksum(data) == rfc1071(data)


@given(st.binary(max_size=256), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_udp_checksum_matches_rfc1071(payload: bytes, src: int, dst: int) -> None:
    wire = encode_udp(UdpDatagram(src, dst, payload), ADDRESS)
    assert rfc1071(pseudo_header(ADDRESS_BYTES, len(wire), 17) + wire) == 0
    assert decode_udp(wire, ADDRESS) == UdpDatagram(src, dst, payload)
