"""The one error the SCION codec raises for bytes it cannot accept.

Decoding untrusted bytes raises only :class:`ScionDecodeError`; ``part`` says
which layer failed so a gateway can map it to an SCMP code or a metric. Misuse
by the caller (encoding out-of-range fields) raises a plain ``ValueError``.
"""

from __future__ import annotations

import enum

from snaptun.errors import SnaptunError


class DecodePart(enum.StrEnum):
    """The layer of a SCION packet a decode error is about."""

    COMMON_HEADER = "common_header"
    ADDRESS_HEADER = "address_header"
    PATH = "path"
    PAYLOAD = "payload"
    UDP = "udp"
    SCMP = "scmp"


class ScionDecodeError(SnaptunError, ValueError):
    """Bytes that are not a valid SCION packet (or UDP/SCMP message).

    ``part`` names the failing layer, ``offset`` the byte offset (from the
    start of the buffer given to the decoder) where that layer begins, if known.
    """

    def __init__(self, part: DecodePart, reason: str, offset: int | None = None) -> None:
        self.part = part
        self.reason = reason
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"invalid SCION {part.value}{where}: {reason}")
