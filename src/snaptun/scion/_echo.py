"""SCMP Echo (ping): build a request, and the reply a host gives to one addressed to it.

A reply goes back the way the request came: source and destination swapped,
the standard path reversed (:meth:`StandardPath.reversed`), the same
identifier, sequence number and data, and a checksum for the reply's own
address header. :func:`echo_reply` is what the gateway sends when a client
pings the gateway's own SCION address.
"""

from __future__ import annotations

from typing import Final

from snaptun.core.addressing import EndhostAddress
from snaptun.scion._address import AddressHeader
from snaptun.scion._errors import DecodePart, ScionDecodeError
from snaptun.scion._packet import NextHeader, ScionPacket, decode, encode
from snaptun.scion._path import EmptyPath, HopField, InfoField, RawPath, StandardPath
from snaptun.scion._scmp import ScmpEchoReply, ScmpEchoRequest, decode_scmp, encode_scmp
from snaptun.scion._types import Buffer

PLACEHOLDER_PATH: Final = StandardPath.from_segments(
    [(InfoField(cons_dir=True), [HopField(cons_egress=1), HopField(cons_ingress=1)])]
)
"""A consistent two-hop standard path with zero MACs.

A tunnel only takes standard paths; a packet that never reaches a border
router (a ping of the gateway itself) needs one that parses, nothing more.
"""


def echo_request(
    source: EndhostAddress,
    destination: EndhostAddress,
    identifier: int,
    sequence: int,
    data: bytes = b"",
    *,
    path: EmptyPath | StandardPath | RawPath = PLACEHOLDER_PATH,
    flow_id: int = 1,
) -> bytes:
    """An SCMP Echo Request packet; ValueError if a field is out of range."""
    address = AddressHeader.between(source, destination)
    payload = encode_scmp(ScmpEchoRequest(identifier, sequence, data), address)
    return encode(ScionPacket(address, path, NextHeader.SCMP, payload, flow_id=flow_id))


def echo_reply(request: Buffer) -> bytes:
    """The SCMP Echo Reply packet to the Echo Request packet ``request``.

    Raises :class:`ScionDecodeError` if ``request`` is not one (undecodable,
    another next header or SCMP type, a bad checksum, or a path that cannot be
    reversed: only the empty and the standard path can).
    """
    packet = decode(request)
    if packet.next_header != NextHeader.SCMP:
        raise ScionDecodeError(DecodePart.SCMP, f"next header {packet.next_header}, not SCMP", 0)
    message = decode_scmp(packet.payload, packet.address)
    if not isinstance(message, ScmpEchoRequest):
        raise ScionDecodeError(DecodePart.SCMP, f"{type(message).__name__}, not an echo request", 0)
    path = packet.path
    if isinstance(path, RawPath):
        raise ScionDecodeError(DecodePart.PATH, f"cannot reverse path type {path.path_type}", 0)
    old = packet.address
    address = AddressHeader(old.src_ia, old.dst_ia, old.src_host, old.dst_host)
    reply = ScmpEchoReply(message.identifier, message.sequence, message.data)
    return encode(
        ScionPacket(
            address,
            path.reversed() if isinstance(path, StandardPath) else path,
            NextHeader.SCMP,
            encode_scmp(reply, address),
            packet.traffic_class,
            packet.flow_id,
        )
    )
