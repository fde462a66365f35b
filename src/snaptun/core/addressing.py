"""SCION addressing: ISD-AS numbers (``1-ff00:0:110``) and end-host addresses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ISD_BITS: Final = 16
_AS_BITS: Final = 48
MAX_ISD: Final = (1 << _ISD_BITS) - 1
MAX_AS: Final = (1 << _AS_BITS) - 1
_MAX_BGP_AS: Final = (1 << 32) - 1


@dataclass(frozen=True, slots=True, order=True)
class IsdAs:
    """An ISD-AS pair; ISD 0 or AS 0 is a wildcard."""

    isd: int
    asn: int

    def __post_init__(self) -> None:
        if not 0 <= self.isd <= MAX_ISD:
            raise ValueError(f"ISD {self.isd} out of range 0..{MAX_ISD}")
        if not 0 <= self.asn <= MAX_AS:
            raise ValueError(f"AS {self.asn} out of range 0..{MAX_AS}")

    @classmethod
    def from_int(cls, value: int) -> IsdAs:
        """Decode the 64-bit wire form (ISD in the top 16 bits)."""
        if not 0 <= value < (1 << 64):
            raise ValueError(f"ISD-AS {value} is not a 64-bit value")
        return cls(value >> _AS_BITS, value & MAX_AS)

    def to_int(self) -> int:
        """Encode to the 64-bit wire form."""
        return (self.isd << _AS_BITS) | self.asn

    @classmethod
    def parse(cls, text: str) -> IsdAs:
        """Parse ``ISD-AS`` text, e.g. ``1-ff00:0:110`` or ``1-64496``."""
        isd_text, sep, as_text = text.strip().partition("-")
        if not sep or not isd_text.isdecimal() or not as_text:
            raise ValueError(f"invalid ISD-AS {text!r}: expected ISD-AS")
        isd = int(isd_text)
        if ":" in as_text:
            groups = as_text.split(":")
            if len(groups) != 3 or not all(_is_hex_group(g) for g in groups):
                raise ValueError(f"invalid AS {as_text!r} in {text!r}")
            asn = (int(groups[0], 16) << 32) | (int(groups[1], 16) << 16) | int(groups[2], 16)
        elif as_text.isdecimal():
            asn = int(as_text)
            if asn > _MAX_BGP_AS:
                raise ValueError(f"decimal AS {asn} above 2^32-1 in {text!r}; use hex groups")
        else:
            raise ValueError(f"invalid AS {as_text!r} in {text!r}")
        return cls(isd, asn)

    @property
    def is_wildcard(self) -> bool:
        """Whether ISD or AS (or both) is the wildcard 0."""
        return self.isd == 0 or self.asn == 0

    def complete_with(self, own: IsdAs) -> IsdAs:
        """Fill the wildcard parts from ``own``."""
        return IsdAs(self.isd or own.isd, self.asn or own.asn)

    def matches(self, other: IsdAs) -> bool:
        """Whether ``other`` is this ISD-AS, treating wildcard parts of self as any."""
        return (self.isd in (0, other.isd)) and (self.asn in (0, other.asn))

    def __str__(self) -> str:
        if self.asn <= _MAX_BGP_AS:
            as_text = str(self.asn)
        else:
            as_text = f"{self.asn >> 32:x}:{(self.asn >> 16) & 0xFFFF:x}:{self.asn & 0xFFFF:x}"
        return f"{self.isd}-{as_text}"


def _is_hex_group(group: str) -> bool:
    return 1 <= len(group) <= 4 and all(c in "0123456789abcdefABCDEF" for c in group)


WILDCARD_ISD_AS: Final = IsdAs(0, 0)


@dataclass(frozen=True, slots=True, order=True)
class EndhostAddress:
    """A SCION end-host address: ISD-AS plus IP address."""

    isd_as: IsdAs
    ip: IPAddress

    @classmethod
    def parse(cls, text: str) -> EndhostAddress:
        """Parse ``1-ff00:0:110,192.0.2.1`` (brackets as the reference prints are accepted)."""
        body = text.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        ia_text, sep, ip_text = body.partition(",")
        if not sep:
            raise ValueError(f"invalid end-host address {text!r}: expected ISD-AS,IP")
        return cls(IsdAs.parse(ia_text), ipaddress.ip_address(ip_text.strip()))

    def __str__(self) -> str:
        return f"{self.isd_as},{self.ip}"
