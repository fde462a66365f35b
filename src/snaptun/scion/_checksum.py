"""RFC 1071 checksums over the SCION pseudo-header (draft-dekater-scion-dataplane).

The one's complement sum of 16-bit big-endian words equals the whole buffer,
read as one big integer, modulo 0xFFFF (because 2**16 is 1 modulo 0xFFFF). That
turns the per-packet checksum into a single ``int.from_bytes`` and a modulo,
without a Python loop over words. A modulo result of 0 stands for the one's
complement value 0xFFFF ("negative zero") whenever the data is not all zeros;
the pseudo-header always carries a non-zero next-header byte, so there it is.
"""

from __future__ import annotations

from typing import Final

from snaptun.scion._types import Buffer

_MOD: Final = 0xFFFF


def ones_complement_sum(data: Buffer) -> int:
    """Sum of ``data`` as 16-bit big-endian words, modulo 0xFFFF (odd tail padded)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % _MOD


def internet_checksum(data: Buffer) -> int:
    """The RFC 1071 checksum of ``data``: the complement of its one's complement sum."""
    value = int.from_bytes(data, "big")
    if value == 0:
        return 0xFFFF
    if len(data) & 1:
        value <<= 8
    return (_MOD - value % _MOD) % _MOD


def pseudo_header_sum(address_header: Buffer, upper_layer_length: int, protocol: int) -> int:
    """Partial sum of the SCION pseudo-header.

    ``address_header`` is the raw address header (ISD-AS pair and both host
    addresses, always an even length); length and protocol complete it.
    """
    return (
        ones_complement_sum(address_header)
        + (upper_layer_length >> 16)
        + (upper_layer_length & 0xFFFF)
        + protocol
    ) % _MOD


def finish_checksum(partial: int, upper_layer: Buffer) -> int:
    """The checksum to write, given the pseudo-header sum and the upper layer (checksum zeroed)."""
    total = (partial + ones_complement_sum(upper_layer)) % _MOD
    return (_MOD - total) % _MOD


def checksum_ok(partial: int, upper_layer: Buffer) -> bool:
    """Whether ``upper_layer`` (checksum field in place) verifies against the pseudo-header sum."""
    return (partial + ones_complement_sum(upper_layer)) % _MOD == 0
