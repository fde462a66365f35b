"""SCMP, the SCION Control Message Protocol (next header 202).

Every message is Type(8) Code(8) Checksum(16) and a type-dependent block; the
checksum covers the SCION pseudo-header and the whole message. Error messages
(types below 128) quote the offending packet after a 4-byte block.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from snaptun.scion._address import AddressHeader
from snaptun.scion._checksum import checksum_ok, finish_checksum, pseudo_header_sum
from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._packet import NextHeader
from snaptun.scion._types import Buffer

SCMP_HEADER_LEN: Final = 4
SCMP_ERROR_PREFIX_LEN: Final = 8
"""Header plus the 4-byte block before an error message's quote."""
MAX_SCMP_ERROR_PACKET: Final = 1232
"""An SCMP error packet, SCION header included, must not exceed this (minimum MTU)."""

_HEAD: Final = struct.Struct("!BBH")
_BLOCK: Final = struct.Struct("!HH")


class ScmpType(enum.IntEnum):
    """SCMP message types."""

    DESTINATION_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    PARAMETER_PROBLEM = 4
    EXTERNAL_INTERFACE_DOWN = 5
    INTERNAL_CONNECTIVITY_DOWN = 6
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    TRACEROUTE_REQUEST = 130
    TRACEROUTE_REPLY = 131


class DestinationUnreachableCode(enum.IntEnum):
    """Codes of Destination Unreachable."""

    NO_ROUTE = 0
    ADMIN_DENY = 1
    BEYOND_SCOPE_OF_SOURCE = 2
    ADDRESS_UNREACHABLE = 3
    PORT_UNREACHABLE = 4
    SOURCE_ADDRESS_FAILED_POLICY = 5
    REJECT_ROUTE = 6


class ParameterProblemCode(enum.IntEnum):
    """Codes of Parameter Problem."""

    ERRONEOUS_HEADER_FIELD = 0
    UNKNOWN_NEXT_HDR_TYPE = 1
    INVALID_COMMON_HEADER = 16
    UNKNOWN_SCION_VERSION = 17
    FLOW_ID_REQUIRED = 18
    INVALID_PACKET_SIZE = 19
    UNKNOWN_PATH_TYPE = 20
    UNKNOWN_ADDRESS_FORMAT = 21
    INVALID_ADDRESS_HEADER = 32
    INVALID_SOURCE_ADDRESS = 33
    INVALID_DESTINATION_ADDRESS = 34
    NON_LOCAL_DELIVERY = 35
    INVALID_PATH = 48
    UNKNOWN_HOP_FIELD_INGRESS = 49
    UNKNOWN_HOP_FIELD_EGRESS = 50
    INVALID_HOP_FIELD_MAC = 51
    PATH_EXPIRED = 52
    INVALID_SEGMENT_CHANGE = 53
    INVALID_EXTENSION_HEADER = 64
    UNKNOWN_HOP_BY_HOP_OPTION = 65
    UNKNOWN_END_TO_END_OPTION = 66


@dataclass(frozen=True, slots=True)
class ScmpDestinationUnreachable:
    """Type 1: the destination cannot be reached; quotes the offending packet."""

    code: int
    quote: bytes


@dataclass(frozen=True, slots=True)
class ScmpPacketTooBig:
    """Type 2: the packet exceeds ``mtu``; quotes the offending packet."""

    mtu: int
    quote: bytes
    code: int = 0


@dataclass(frozen=True, slots=True)
class ScmpParameterProblem:
    """Type 4: ``pointer`` is the byte offset of the problem in the quoted packet."""

    code: int
    pointer: int
    quote: bytes


@dataclass(frozen=True, slots=True)
class ScmpEchoRequest:
    """Type 128: ping."""

    identifier: int
    sequence: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ScmpEchoReply:
    """Type 129: the answer to a ping, echoing its data."""

    identifier: int
    sequence: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class ScmpOther:
    """Any other type (interface down, traceroute, unknown), body kept as bytes."""

    type: int
    code: int
    body: bytes


ScmpMessage = (
    ScmpDestinationUnreachable
    | ScmpPacketTooBig
    | ScmpParameterProblem
    | ScmpEchoRequest
    | ScmpEchoReply
    | ScmpOther
)


def scmp_is_error(message: ScmpMessage) -> bool:
    """Whether ``message`` is an error message (type below 128)."""
    return _type_code(message)[0] < 128


def _type_code(message: ScmpMessage) -> tuple[int, int]:
    if isinstance(message, ScmpDestinationUnreachable):
        return ScmpType.DESTINATION_UNREACHABLE, message.code
    if isinstance(message, ScmpPacketTooBig):
        return ScmpType.PACKET_TOO_BIG, message.code
    if isinstance(message, ScmpParameterProblem):
        return ScmpType.PARAMETER_PROBLEM, message.code
    if isinstance(message, ScmpEchoRequest):
        return ScmpType.ECHO_REQUEST, 0
    if isinstance(message, ScmpEchoReply):
        return ScmpType.ECHO_REPLY, 0
    return message.type, message.code


def _body(message: ScmpMessage) -> bytes:
    if isinstance(message, ScmpDestinationUnreachable):
        return bytes(4) + message.quote
    if isinstance(message, ScmpPacketTooBig):
        return _BLOCK.pack(0, message.mtu) + message.quote
    if isinstance(message, ScmpParameterProblem):
        return _BLOCK.pack(0, message.pointer) + message.quote
    if isinstance(message, ScmpEchoRequest | ScmpEchoReply):
        return _BLOCK.pack(message.identifier, message.sequence) + message.data
    return message.body


def encode_scmp(message: ScmpMessage, address: AddressHeader) -> bytes:
    """The SCMP message with its checksum for ``address``; ValueError on out-of-range fields."""
    try:
        head = _HEAD.pack(*_type_code(message), 0)
        body = _body(message)
    except struct.error as exc:
        raise ValueError(f"SCMP field out of range: {exc}") from exc
    length = len(head) + len(body)
    partial = pseudo_header_sum(address.encode(), length, NextHeader.SCMP)
    checksum = finish_checksum(partial, head + body)
    return head[:2] + checksum.to_bytes(2, "big") + body


def decode_scmp(  # noqa: PLR0911 - one return per message type
    data: Buffer, address: AddressHeader, *, verify: bool = True
) -> ScmpMessage:
    """Decode an SCMP message (the SCION payload); ``verify`` checks its checksum."""
    size = len(data)
    if size < SCMP_HEADER_LEN:
        raise ScionDecodeError(DecodePart.SCMP, f"{size} bytes, shorter than an SCMP header", 0)
    if verify and not checksum_ok(pseudo_header_sum(address.encode(), size, NextHeader.SCMP), data):
        raise ScionDecodeError(DecodePart.SCMP, "checksum mismatch", 0)
    type_, code, _ = _HEAD.unpack_from(data)
    if type_ not in _BLOCK_TYPES:
        return ScmpOther(type_, code, bytes(data[SCMP_HEADER_LEN:]))
    if size < SCMP_ERROR_PREFIX_LEN:
        raise ScionDecodeError(DecodePart.SCMP, f"type {type_} needs 8 bytes, got {size}", 0)
    first, second = _BLOCK.unpack_from(data, SCMP_HEADER_LEN)
    rest = bytes(data[SCMP_ERROR_PREFIX_LEN:])
    if type_ == ScmpType.DESTINATION_UNREACHABLE:
        return ScmpDestinationUnreachable(code, rest)
    if type_ == ScmpType.PACKET_TOO_BIG:
        return ScmpPacketTooBig(second, rest, code)
    if type_ == ScmpType.PARAMETER_PROBLEM:
        return ScmpParameterProblem(code, second, rest)
    if code != 0:
        return ScmpOther(type_, code, bytes(data[SCMP_HEADER_LEN:]))
    if type_ == ScmpType.ECHO_REQUEST:
        return ScmpEchoRequest(first, second, rest)
    return ScmpEchoReply(first, second, rest)


_BLOCK_TYPES: Final = frozenset(
    {
        ScmpType.DESTINATION_UNREACHABLE,
        ScmpType.PACKET_TOO_BIG,
        ScmpType.PARAMETER_PROBLEM,
        ScmpType.ECHO_REQUEST,
        ScmpType.ECHO_REPLY,
    }
)
