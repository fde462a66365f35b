"""The gateway's packet policy for packets leaving a tunnel (docs/GATEWAY.md, "Packet policy").

A packet from a client is forwarded only if its headers parse, its source is
the tunnel's assigned address, its path is a consistent standard path and its
payload is exactly PayloadLen bytes (neither truncated nor followed by trailing
bytes: the policy accepts exactly the packets :func:`decode` accepts, whose
source is the tunnel's and whose path is the standard one). Checks run in the
order a gateway parses the packet, on the raw bytes, without building a
:class:`ScionPacket`. A violation carries
the SCMP Parameter Problem code and pointer to answer with, and a short
``reason`` for metrics; :func:`build_parameter_problem` builds that answer.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.scion._address import (
    ADDRESS_HEADER_FIXED_LEN,
    AddressHeader,
    endhost_wire,
    host_length,
)
from snaptun.scion._packet import (
    COMMON,
    COMMON_HEADER_LEN,
    MIN_HDR_LEN_UNITS,
    SCION_VERSION,
    NextHeader,
    empty_path_packet,
    encode,
)
from snaptun.scion._path import PathType, standard_path_problem
from snaptun.scion._scmp import (
    MAX_SCMP_ERROR_PACKET,
    SCMP_ERROR_PREFIX_LEN,
    ParameterProblemCode,
    ScmpParameterProblem,
    encode_scmp,
)
from snaptun.scion._types import Buffer

_SRC_ISD_OFFSET: Final = COMMON_HEADER_LEN + 8


class Violation(enum.StrEnum):
    """Why a tunnel packet was refused; the value is the metric label."""

    INVALID_COMMON_HEADER = "invalid_common_header"
    INVALID_ADDRESS_HEADER = "invalid_address_header"
    INVALID_SOURCE_ADDRESS = "invalid_source_address"
    UNKNOWN_PATH_TYPE = "unknown_path_type"
    INVALID_PATH = "invalid_path"
    INVALID_PACKET_SIZE = "invalid_packet_size"


_CODES: Final = {
    Violation.INVALID_COMMON_HEADER: ParameterProblemCode.INVALID_COMMON_HEADER,
    Violation.INVALID_ADDRESS_HEADER: ParameterProblemCode.INVALID_ADDRESS_HEADER,
    Violation.INVALID_SOURCE_ADDRESS: ParameterProblemCode.INVALID_SOURCE_ADDRESS,
    Violation.UNKNOWN_PATH_TYPE: ParameterProblemCode.UNKNOWN_PATH_TYPE,
    Violation.INVALID_PATH: ParameterProblemCode.INVALID_PATH,
    Violation.INVALID_PACKET_SIZE: ParameterProblemCode.INVALID_PACKET_SIZE,
}


@dataclass(frozen=True, slots=True)
class PolicyViolation:
    """A refused packet: the SCMP code and pointer to report, and a human-readable detail."""

    kind: Violation
    pointer: int
    detail: str

    @property
    def code(self) -> ParameterProblemCode:
        """The SCMP Parameter Problem code of this violation."""
        return _CODES[self.kind]

    @property
    def reason(self) -> str:
        """The short metric label, e.g. ``invalid_source_address``."""
        return self.kind.value


@lru_cache(maxsize=4096)
def _assigned_wire(assigned: EndhostAddress) -> tuple[int, bytes, bytes]:
    code, wire = endhost_wire(assigned)
    return code, wire[:8], wire[8:]


def check_tunnel_packet(  # noqa: PLR0911 - one return per row of the policy table
    packet: Buffer, assigned: EndhostAddress
) -> PolicyViolation | None:
    """None if ``packet`` may leave the tunnel whose address is ``assigned``, else why not."""
    size = len(packet)
    if size < COMMON_HEADER_LEN:
        return PolicyViolation(
            Violation.INVALID_COMMON_HEADER, 0, f"{size} bytes, shorter than the common header"
        )
    first, _, hdr_units, payload_len, path_type, type_len, _ = COMMON.unpack_from(packet)
    if first >> 28 != SCION_VERSION:
        return PolicyViolation(
            Violation.INVALID_COMMON_HEADER, 0, f"unsupported version {first >> 28}"
        )
    if hdr_units < MIN_HDR_LEN_UNITS:
        return PolicyViolation(Violation.INVALID_COMMON_HEADER, 0, f"HdrLen {hdr_units} below 9")

    hdr_len = hdr_units * 4
    dst_len = host_length(type_len >> 4)
    src_at = COMMON_HEADER_LEN + ADDRESS_HEADER_FIXED_LEN + dst_len
    path_offset = src_at + host_length(type_len)
    if path_offset > hdr_len or path_offset > size:
        return PolicyViolation(
            Violation.INVALID_ADDRESS_HEADER,
            COMMON_HEADER_LEN,
            f"address header of {path_offset - COMMON_HEADER_LEN} bytes does not fit",
        )

    src_code, src_ia, src_host = _assigned_wire(assigned)
    if (
        type_len & 0xF != src_code
        or packet[_SRC_ISD_OFFSET : _SRC_ISD_OFFSET + 8] != src_ia
        or packet[src_at:path_offset] != src_host
    ):
        return PolicyViolation(
            Violation.INVALID_SOURCE_ADDRESS, _SRC_ISD_OFFSET, f"source is not {assigned}"
        )

    if path_type != PathType.SCION:
        return PolicyViolation(
            Violation.UNKNOWN_PATH_TYPE, 8, f"path type {path_type} is not the standard path"
        )
    if size < hdr_len:
        return PolicyViolation(
            Violation.INVALID_PATH, path_offset, f"header of {hdr_len} bytes truncated at {size}"
        )
    problem = standard_path_problem(packet, path_offset, hdr_len - path_offset)
    if problem is not None:
        return PolicyViolation(Violation.INVALID_PATH, path_offset, problem)

    # Exactly PayloadLen bytes, as the codec requires: the reference forwards trailing
    # bytes, but nobody defines them, so they are refused like a truncated payload.
    if size - hdr_len != payload_len:
        return PolicyViolation(
            Violation.INVALID_PACKET_SIZE,
            path_offset,
            f"PayloadLen {payload_len} but {size - hdr_len} bytes follow the header",
        )
    return None


def build_parameter_problem(  # noqa: PLR0917 - signature agreed with the gateway
    offending: Buffer,
    code: int,
    pointer: int,
    gateway: EndhostAddress,
    client: EndhostAddress,
    max_size: int = MAX_SCMP_ERROR_PACKET,
    *,
    flow_id: int = 1,
    destination: EndhostAddress | None = None,
) -> bytes:
    """An SCMP Parameter Problem packet about ``offending``, to send back into the tunnel.

    It comes from ``gateway``'s host in the client's ISD-AS over the empty path
    and goes to the offending packet's source if that is an IP end-host
    address, else to ``client`` (the tunnel's assigned address), unless
    ``destination`` says where (a gateway answers into the tunnel, so it
    addresses the tunnel's client even when the source was spoofed). It quotes as
    much of ``offending`` as keeps the whole packet within ``max_size`` bytes.
    """
    destination = destination or _offending_source(offending) or client
    address = AddressHeader(destination.isd_as, client.isd_as, destination.ip, gateway.ip)
    room = max_size - COMMON_HEADER_LEN - len(address.encode()) - SCMP_ERROR_PREFIX_LEN
    if room < 0:
        raise ValueError(f"max_size {max_size} leaves no room for the SCMP headers")
    message = ScmpParameterProblem(code, pointer, bytes(offending[:room]))
    payload = encode_scmp(message, address)
    return encode(empty_path_packet(address, NextHeader.SCMP, payload, flow_id=flow_id))


def _offending_source(offending: Buffer) -> EndhostAddress | None:
    """The source end-host address of ``offending`` if its headers get that far."""
    size = len(offending)
    if size < COMMON_HEADER_LEN:
        return None
    first, _, hdr_units, _, _, type_len, _ = COMMON.unpack_from(offending)
    if first >> 28 != SCION_VERSION or hdr_units < MIN_HDR_LEN_UNITS:
        return None
    src_code = type_len & 0xF
    src_at = COMMON_HEADER_LEN + ADDRESS_HEADER_FIXED_LEN + host_length(type_len >> 4)
    end = src_at + host_length(src_code)
    if end > hdr_units * 4 or end > size or src_code not in (0b0000, 0b0011):
        return None
    isd_as = IsdAs.from_int(int.from_bytes(offending[_SRC_ISD_OFFSET : _SRC_ISD_OFFSET + 8], "big"))
    raw = bytes(offending[src_at:end])
    ip = ipaddress.IPv4Address(raw) if src_code == 0 else ipaddress.IPv6Address(raw)
    return EndhostAddress(isd_as, ip)


def may_answer_with_scmp_error(packet: Buffer) -> bool:
    """False if ``packet`` is visibly an SCMP error message, which must not be answered."""
    size = len(packet)
    if size < COMMON_HEADER_LEN:
        return True
    _, next_hdr, hdr_units, _, _, _, _ = COMMON.unpack_from(packet)
    hdr_len = hdr_units * 4
    return not (next_hdr == NextHeader.SCMP and hdr_len < size and packet[hdr_len] < 128)
