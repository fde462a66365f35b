"""Whole SCION packets: the 12-byte common header, address header, path, payload.

``decode`` accepts exactly one packet (PayloadLen must match the bytes after
the header); ``encode`` computes HdrLen, PayloadLen, PathType and DT/DL/ST/SL.
Extension headers are not interpreted: they stay at the front of ``payload``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from snaptun.core.addressing import EndhostAddress
from snaptun.scion._address import (
    ADDRESS_HEADER_FIXED_LEN,
    AddressHeader,
    decode_host,
    decode_ia_pair,
    host_length,
)
from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._path import (
    EMPTY_PATH,
    EmptyPath,
    RawPath,
    StandardPath,
    decode_path,
    encode_path,
)
from snaptun.scion._types import Buffer

COMMON_HEADER_LEN: Final = 12
MIN_HDR_LEN_UNITS: Final = 9
"""Smallest HdrLen: common header plus the smallest address header (36 bytes)."""
MAX_HEADER_LEN: Final = 255 * 4
SCION_VERSION: Final = 0

COMMON: Final = struct.Struct("!IBBHBBH")
"""Version/TrafficClass/FlowID, NextHdr, HdrLen, PayloadLen, PathType, DT/DL/ST/SL, RSV."""


class NextHeader(enum.IntEnum):
    """Assigned SCION protocol numbers used in NextHdr."""

    TCP = 6
    UDP = 17
    HOP_BY_HOP = 200
    END_TO_END = 201
    SCMP = 202
    BFD = 203


@dataclass(frozen=True, slots=True)
class ScionPacket:
    """A SCION packet; lengths and type codes are derived when encoding."""

    address: AddressHeader
    path: EmptyPath | StandardPath | RawPath
    next_header: int
    payload: bytes
    traffic_class: int = 0
    flow_id: int = 1
    """20-bit flow label; the draft requires sources to set it."""

    @property
    def source(self) -> EndhostAddress | None:
        """The source end-host address, or None if the source host is not an IP address."""
        return self.address.source

    @property
    def destination(self) -> EndhostAddress | None:
        """The destination end-host address, or None if it is not an IP address."""
        return self.address.destination


def decode(data: Buffer) -> ScionPacket:
    """Decode one SCION packet; raises :class:`ScionDecodeError` naming the failing part."""
    size = len(data)
    if size < COMMON_HEADER_LEN:
        raise ScionDecodeError(
            DecodePart.COMMON_HEADER, f"{size} bytes, shorter than the common header", 0
        )
    first, next_hdr, hdr_units, payload_len, path_type, type_len, _ = COMMON.unpack_from(data)
    if first >> 28 != SCION_VERSION:
        raise ScionDecodeError(DecodePart.COMMON_HEADER, f"unsupported version {first >> 28}", 0)
    if hdr_units < MIN_HDR_LEN_UNITS:
        raise ScionDecodeError(DecodePart.COMMON_HEADER, f"HdrLen {hdr_units} below 9", 0)
    hdr_len = hdr_units * 4
    dst_len, src_len = host_length(type_len >> 4), host_length(type_len)
    path_offset = COMMON_HEADER_LEN + ADDRESS_HEADER_FIXED_LEN + dst_len + src_len
    if path_offset > hdr_len:
        raise ScionDecodeError(
            DecodePart.ADDRESS_HEADER,
            f"address header ends at {path_offset}, beyond the header length {hdr_len}",
            COMMON_HEADER_LEN,
        )
    if size < path_offset:
        raise ScionDecodeError(DecodePart.ADDRESS_HEADER, "truncated", COMMON_HEADER_LEN)
    if size < hdr_len:
        raise ScionDecodeError(DecodePart.PATH, "truncated", path_offset)
    path = decode_path(path_type, data, path_offset, hdr_len - path_offset)
    end = hdr_len + payload_len
    if size != end:
        what = "truncated" if size < end else f"{size - end} bytes after the payload"
        raise ScionDecodeError(DecodePart.PAYLOAD, f"PayloadLen {payload_len} but {what}", hdr_len)
    dst_ia, src_ia = decode_ia_pair(data, COMMON_HEADER_LEN)
    host_at = COMMON_HEADER_LEN + ADDRESS_HEADER_FIXED_LEN
    dst_host = decode_host(type_len >> 4, bytes(data[host_at : host_at + dst_len]))
    src_host = decode_host(type_len & 0xF, bytes(data[host_at + dst_len : path_offset]))
    return ScionPacket(
        AddressHeader(dst_ia, src_ia, dst_host, src_host),
        path,
        next_hdr,
        bytes(data[hdr_len:end]),
        (first >> 20) & 0xFF,
        first & 0xFFFFF,
    )


def encode(packet: ScionPacket) -> bytes:
    """Encode ``packet``; ValueError if a field is out of range or the header too long."""
    address = packet.address.encode()
    path = encode_path(packet.path)
    hdr_len = COMMON_HEADER_LEN + len(address) + len(path)
    if hdr_len > MAX_HEADER_LEN:
        raise ValueError(f"SCION header of {hdr_len} bytes exceeds {MAX_HEADER_LEN}")
    if len(packet.payload) > 0xFFFF:
        raise ValueError(f"payload of {len(packet.payload)} bytes exceeds 65535")
    if not 0 <= packet.traffic_class <= 0xFF or not 0 <= packet.flow_id <= 0xFFFFF:
        raise ValueError("traffic class must fit 8 bits and flow ID 20 bits")
    if not 0 <= packet.next_header <= 0xFF:
        raise ValueError(f"next header {packet.next_header} out of range 0..255")
    common = COMMON.pack(
        packet.traffic_class << 20 | packet.flow_id,
        packet.next_header,
        hdr_len // 4,
        len(packet.payload),
        packet.path.path_type,
        packet.address.type_length_bits,
        0,
    )
    return b"".join((common, address, path, packet.payload))


def empty_path_packet(
    address: AddressHeader, next_header: int, payload: bytes, *, flow_id: int = 1
) -> ScionPacket:
    """A packet over the empty path (intra-AS), as the gateway sends its own messages."""
    return ScionPacket(address, EMPTY_PATH, next_header, payload, 0, flow_id)
