"""The SCION address header: an ISD-AS pair and two host addresses.

Host addresses are typed by the common header's DT/DL and ST/SL bits: type 0
length 0 is IPv4, type 0 length 3 is IPv6, type 1 length 0 a service address.
Unassigned combinations are kept as raw bytes so that they still round-trip.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from snaptun.core.addressing import EndhostAddress, IPAddress, IsdAs
from snaptun.scion._types import Buffer

_IA_PAIR: Final = struct.Struct("!QQ")
_SVC: Final = struct.Struct("!HH")

ADDRESS_HEADER_FIXED_LEN: Final = 16
"""Bytes of the ISD-AS pair that opens the address header."""


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """A SCION service address: the 16-bit number of a service, not a single host."""

    number: int

    def __str__(self) -> str:
        return f"svc:{self.number:#06x}"


SVC_DS: Final = ServiceAddress(0x0001)
"""The discovery service."""
SVC_CS: Final = ServiceAddress(0x0002)
"""The control service."""


@dataclass(frozen=True, slots=True)
class RawHostAddress:
    """A host address of an unassigned type/length combination, kept as bytes."""

    type: int
    """The 2-bit address type (DT or ST)."""
    raw: bytes
    """4, 8, 12 or 16 bytes; the length code is derived from it."""


HostAddress = ipaddress.IPv4Address | ipaddress.IPv6Address | ServiceAddress | RawHostAddress


@dataclass(frozen=True, slots=True)
class AddressHeader:
    """Destination and source ISD-AS and host addresses, in wire order."""

    dst_ia: IsdAs
    src_ia: IsdAs
    dst_host: HostAddress
    src_host: HostAddress

    @classmethod
    def between(cls, src: EndhostAddress, dst: EndhostAddress) -> AddressHeader:
        """The header for a packet from ``src`` to ``dst``."""
        return cls(dst.isd_as, src.isd_as, dst.ip, src.ip)

    @property
    def source(self) -> EndhostAddress | None:
        """The source as an end-host address, or None for service/raw hosts."""
        return _endhost(self.src_ia, self.src_host)

    @property
    def destination(self) -> EndhostAddress | None:
        """The destination as an end-host address, or None for service/raw hosts."""
        return _endhost(self.dst_ia, self.dst_host)

    @property
    def type_length_bits(self) -> int:
        """The DT/DL/ST/SL byte of the common header for these hosts."""
        return (host_type_length(self.dst_host) << 4) | host_type_length(self.src_host)

    def encode(self) -> bytes:
        """The wire form, as it also enters the checksum pseudo-header."""
        return b"".join(
            (
                _IA_PAIR.pack(self.dst_ia.to_int(), self.src_ia.to_int()),
                host_bytes(self.dst_host),
                host_bytes(self.src_host),
            )
        )


def _endhost(isd_as: IsdAs, host: HostAddress) -> EndhostAddress | None:
    if isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return EndhostAddress(isd_as, host)
    return None


def host_type_length(host: HostAddress) -> int:
    """The 4-bit type/length code (type in the high two bits) of ``host``."""
    if isinstance(host, ipaddress.IPv4Address):
        return 0b0000
    if isinstance(host, ipaddress.IPv6Address):
        return 0b0011
    if isinstance(host, ServiceAddress):
        return 0b0100
    if not 0 <= host.type <= 3 or len(host.raw) not in (4, 8, 12, 16):
        raise ValueError(f"raw host address needs type 0..3 and 4/8/12/16 bytes, got {host!r}")
    return (host.type << 2) | (len(host.raw) // 4 - 1)


def host_bytes(host: HostAddress) -> bytes:
    """The wire bytes of ``host`` (service addresses are padded with two zero bytes)."""
    if isinstance(host, ServiceAddress):
        if not 0 <= host.number <= 0xFFFF:
            raise ValueError(f"service number {host.number} out of range 0..0xffff")
        return _SVC.pack(host.number, 0)
    if isinstance(host, RawHostAddress):
        return host.raw
    return host.packed


def host_length(type_length: int) -> int:
    """Bytes of a host address with the given 4-bit type/length code."""
    return ((type_length & 0b11) + 1) * 4


def decode_host(type_length: int, raw: bytes) -> HostAddress:
    """Interpret ``raw`` (already of the right length) by its type/length code."""
    if type_length == 0b0000:
        return ipaddress.IPv4Address(raw)
    if type_length == 0b0011:
        return ipaddress.IPv6Address(raw)
    if type_length == 0b0100:
        return ServiceAddress(int.from_bytes(raw[:2], "big"))
    return RawHostAddress(type_length >> 2, raw)


def decode_ia_pair(data: Buffer, offset: int) -> tuple[IsdAs, IsdAs]:
    """Destination and source ISD-AS at ``offset`` (caller checked the length)."""
    dst, src = _IA_PAIR.unpack_from(data, offset)
    return IsdAs.from_int(dst), IsdAs.from_int(src)


def endhost_wire(address: EndhostAddress) -> tuple[int, bytes]:
    """The type/length code and ISD-AS-plus-host bytes that identify ``address`` on the wire."""
    ip: IPAddress = address.ip
    code = 0b0000 if isinstance(ip, ipaddress.IPv4Address) else 0b0011
    return code, address.isd_as.to_int().to_bytes(8, "big") + ip.packed
