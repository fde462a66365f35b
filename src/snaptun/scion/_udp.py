"""UDP over SCION (next header 17), checksummed over the SCION pseudo-header.

The UDP Length field is the upper-layer length of the pseudo-header and must
equal the bytes given; a computed checksum of zero is sent as zero, as
scionproto does (verification treats 0x0000 and 0xFFFF alike).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from snaptun.scion._address import AddressHeader
from snaptun.scion._checksum import checksum_ok, finish_checksum, pseudo_header_sum
from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._packet import NextHeader
from snaptun.scion._types import Buffer

UDP_HEADER_LEN: Final = 8
_UDP: Final = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A UDP datagram carried in a SCION packet."""

    src_port: int
    dst_port: int
    payload: bytes


def encode_udp(datagram: UdpDatagram, address: AddressHeader) -> bytes:
    """The UDP header and payload, with the checksum for ``address``."""
    length = UDP_HEADER_LEN + len(datagram.payload)
    if length > 0xFFFF:
        raise ValueError(f"UDP datagram of {length} bytes exceeds 65535")
    try:
        header = _UDP.pack(datagram.src_port, datagram.dst_port, length, 0)
    except struct.error as exc:
        raise ValueError(f"UDP port out of range: {exc}") from exc
    partial = pseudo_header_sum(address.encode(), length, NextHeader.UDP)
    checksum = finish_checksum(partial, header + datagram.payload)
    return header[:6] + checksum.to_bytes(2, "big") + datagram.payload


def decode_udp(data: Buffer, address: AddressHeader, *, verify: bool = True) -> UdpDatagram:
    """Decode a UDP datagram (the SCION payload); ``verify`` checks its checksum."""
    if len(data) < UDP_HEADER_LEN:
        raise ScionDecodeError(DecodePart.UDP, f"{len(data)} bytes, shorter than a UDP header", 0)
    src_port, dst_port, length, _ = _UDP.unpack_from(data)
    if length != len(data):
        raise ScionDecodeError(DecodePart.UDP, f"Length {length} but {len(data)} bytes", 0)
    if verify and not checksum_ok(
        pseudo_header_sum(address.encode(), length, NextHeader.UDP), data
    ):
        raise ScionDecodeError(DecodePart.UDP, "checksum mismatch", 0)
    return UdpDatagram(src_port, dst_port, bytes(data[UDP_HEADER_LEN:]))
