"""The gateway's forwarding step, sans-I/O: one header parse per packet, one route table.

A packet from a tunnel is parsed once, yielding both the packet policy's
verdict (:func:`snaptun.scion.check_tunnel_packet`: the source is the tunnel's
address, the path a consistent standard path, exactly PayloadLen bytes follow
the header) and, for a valid packet, its route (:func:`route_key`: the
destination ISD-AS and IP host bytes). Those two functions stay the reference
the step is tested against; the step returns the same answers, cheaper:

* the header up to the path's meta header is read with one ``struct`` call
  (one precomputed layout per DT/DL/ST/SL byte), so a valid packet costs no
  slicing beyond the route key;
* what a tunnel's packets must carry as source is computed once per tunnel
  (:class:`Route`, at attach and re-assignment), never hashed per packet;
* decisions are small integers (:class:`Verdict`) or the target :class:`Route`,
  so the per-packet path allocates only the route key.

One decision goes beyond the reference: a valid packet that carries an SCMP
Echo Request (type 128, code 0, right after the header) to one of the
gateway's own host addresses (``gateway_hosts``) in the sender's own ISD-AS,
and is routed to no tunnel, is ``ECHO_REQUEST``: the gateway answers it itself
(:func:`snaptun.scion.echo_reply`). Every other packet to those addresses is
decided as the reference decides it.

Packets too short for the layout, or with a source host that is no IP address,
take the reference path: they are violations in any case.

Invariant (:class:`RouteTable`): an address is routed to, and accepted as
source from, at most one tunnel. Adding or moving a route onto an address that
is routed already raises :class:`RouteConflict`; a route that was removed is
``DETACHED``: its packets are dropped, whatever their source.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from typing import Final, Generic, TypeVar

from snaptun.core.addressing import EndhostAddress, IPAddress
from snaptun.errors import SnaptunError
from snaptun.scion._address import endhost_wire, host_length
from snaptun.scion._packet import MIN_HDR_LEN_UNITS, SCION_VERSION, NextHeader
from snaptun.scion._path import HOP_LEN, INFO_LEN, META_LEN, PathType
from snaptun.scion._policy import Violation, check_tunnel_packet
from snaptun.scion._scmp import ScmpType

__all__ = ["Route", "RouteConflict", "RouteTable", "Verdict", "address_key", "route_key"]

_DST_ISD_AS: Final = slice(12, 20)
_DST_HOST_AT: Final = 28
_HOST_LENGTHS: Final = {0b0000: 4, 0b0011: 16}  # DT/DL of IPv4 and IPv6 hosts


def route_key(packet: bytes) -> bytes | None:
    """Destination ISD-AS and IP host bytes of a SCION packet, or None if not an IP host.

    The reference of the route key: :meth:`RouteTable.from_tunnel` and
    :meth:`RouteTable.from_underlay` compute the same key inline.
    """
    if len(packet) < _DST_HOST_AT:
        return None
    length = _HOST_LENGTHS.get(packet[9] >> 4)
    if length is None or len(packet) < _DST_HOST_AT + length:
        return None
    return packet[_DST_ISD_AS] + packet[_DST_HOST_AT : _DST_HOST_AT + length]


def address_key(address: EndhostAddress) -> bytes:
    """The :func:`route_key` of packets addressed to ``address``."""
    return address.isd_as.to_int().to_bytes(8, "big") + address.ip.packed


class Verdict(enum.IntEnum):
    """What to do with a packet that goes to no tunnel; the label is its metric reason."""

    UNDERLAY = 0
    """Valid, and not for a tunnel of this gateway: to the border router."""
    DETACHED = 1
    """From a tunnel whose route was removed (replaced or closed)."""
    INVALID_COMMON_HEADER = 2
    INVALID_ADDRESS_HEADER = 3
    INVALID_SOURCE_ADDRESS = 4
    UNKNOWN_PATH_TYPE = 5
    INVALID_PATH = 6
    INVALID_PACKET_SIZE = 7
    UNPARSABLE = 8
    """From the underlay: no IP host destination to route by."""
    UNKNOWN_DESTINATION = 9
    """From the underlay: for an address no tunnel has."""
    ECHO_REQUEST = 10
    """From a tunnel: an SCMP Echo Request to the gateway itself, which answers it."""

    @property
    def reason(self) -> str:
        """The drop reason exported on ``snaptun_gateway_drops_total``."""
        return _REASONS[self]

    @property
    def violation(self) -> Violation | None:
        """The packet policy's :class:`~snaptun.scion.Violation`, if this is one."""
        return _VIOLATIONS.get(self)


_VIOLATIONS: Final = {
    Verdict.INVALID_COMMON_HEADER: Violation.INVALID_COMMON_HEADER,
    Verdict.INVALID_ADDRESS_HEADER: Violation.INVALID_ADDRESS_HEADER,
    Verdict.INVALID_SOURCE_ADDRESS: Violation.INVALID_SOURCE_ADDRESS,
    Verdict.UNKNOWN_PATH_TYPE: Violation.UNKNOWN_PATH_TYPE,
    Verdict.INVALID_PATH: Violation.INVALID_PATH,
    Verdict.INVALID_PACKET_SIZE: Violation.INVALID_PACKET_SIZE,
}
_OF_VIOLATION: Final = {violation: verdict for verdict, violation in _VIOLATIONS.items()}
_REASONS: Final = {
    Verdict.UNDERLAY: "",
    Verdict.DETACHED: "tunnel_detached",
    Verdict.UNPARSABLE: "underlay_unparsable",
    Verdict.UNKNOWN_DESTINATION: "unknown_destination",
    Verdict.ECHO_REQUEST: "scmp_echo_request",
    **{verdict: violation.value for verdict, violation in _VIOLATIONS.items()},
}

# Module-level names: the per-packet path loads globals, not enum attributes.
_UNDERLAY: Final = Verdict.UNDERLAY
_DETACHED: Final = Verdict.DETACHED
_COMMON_HEADER: Final = Verdict.INVALID_COMMON_HEADER
_ADDRESS_HEADER: Final = Verdict.INVALID_ADDRESS_HEADER
_SOURCE: Final = Verdict.INVALID_SOURCE_ADDRESS
_PATH_TYPE: Final = Verdict.UNKNOWN_PATH_TYPE
_PATH: Final = Verdict.INVALID_PATH
_SIZE: Final = Verdict.INVALID_PACKET_SIZE
_UNPARSABLE: Final = Verdict.UNPARSABLE
_UNKNOWN: Final = Verdict.UNKNOWN_DESTINATION
_ECHO: Final = Verdict.ECHO_REQUEST
_SCMP: Final = int(NextHeader.SCMP)
_ECHO_TYPE: Final = int(ScmpType.ECHO_REQUEST)
_ECHO_LEN: Final = 8  # type, code, checksum, identifier, sequence number
_STANDARD: Final = int(PathType.SCION)


def _layouts() -> dict[int, tuple[struct.Struct, bool]]:
    """Per DT/DL/ST/SL byte with an IP source: the header up to the meta header, and
    whether the destination is an IP host (routable to a tunnel)."""
    layouts = {}
    for dst in range(16):
        for src in (0b0000, 0b0011):
            fmt = f"!IBBHBBH8s8s{host_length(dst)}s{host_length(src)}sI"
            layouts[dst << 4 | src] = (struct.Struct(fmt), dst in _HOST_LENGTHS)
    return layouts


_LAYOUTS: Final = _layouts()
_SHORTEST: Final = min(layout.size for layout, _ in _LAYOUTS.values())


class RouteConflict(SnaptunError, RuntimeError):
    """An address would be routed to two tunnels at once (a defect, never peer input)."""


class Route:
    """One tunnel's address, with what its packets must carry on the wire as their source.

    ``src_type_len``, ``src_ia`` and ``src_host`` (the ST/SL code, source ISD-AS
    and host bytes) are computed once per address: at construction and by
    :meth:`RouteTable.readdress`. ``routed`` is true exactly while the table
    routes ``key`` to this route.
    """

    __slots__ = ("address", "key", "routed", "src_host", "src_ia", "src_type_len")

    def __init__(self, address: EndhostAddress) -> None:
        self.routed = False
        self._set(address)

    def _set(self, address: EndhostAddress) -> None:
        code, wire = endhost_wire(address)
        self.address = address
        self.key = address_key(address)
        self.src_type_len = code
        self.src_ia = wire[:8]
        self.src_host = wire[8:]


R = TypeVar("R", bound=Route)


class RouteTable(Generic[R]):
    """Routes by address, and the forwarding step of the packets from and to them."""

    def __init__(self, gateway_hosts: Iterable[IPAddress] = ()) -> None:
        self._routes: dict[bytes, R] = {}
        self._gateway_hosts = frozenset(host.packed for host in gateway_hosts)
        """The gateway's own host addresses: SCMP Echo Requests to them are ``ECHO_REQUEST``."""

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._routes.values()))

    def get(self, address: EndhostAddress) -> R | None:
        """The route of ``address``, if any."""
        return self._routes.get(address_key(address))

    def add(self, route: R) -> None:
        """Route ``route.address`` to ``route``; :class:`RouteConflict` if it is routed already."""
        if self._routes.get(route.key, route) is not route:
            raise RouteConflict(f"{route.address} is routed to another tunnel already")
        self._routes[route.key] = route
        route.routed = True

    def remove(self, route: R) -> None:
        """Stop routing to ``route`` (idempotent); its packets are ``DETACHED`` from now on."""
        if self._routes.get(route.key) is route:
            del self._routes[route.key]
        route.routed = False

    def readdress(self, route: R, address: EndhostAddress) -> None:
        """Move ``route`` to ``address``; on :class:`RouteConflict` nothing changes.

        A route that is not in the table takes the address and stays out of it.
        """
        if not route.routed:
            route._set(address)
            return
        key = address_key(address)
        if self._routes.get(key, route) is not route:
            raise RouteConflict(f"{address} is routed to another tunnel already")
        self.remove(route)
        route._set(address)  # the table moves routes, so it re-addresses them
        self.add(route)  # checked above, before the old route was given up

    def from_tunnel(self, route: R, packet: bytes) -> R | Verdict:  # noqa: PLR0911
        """The tunnel to switch ``packet`` to, else what to do with it.

        Agrees with :func:`check_tunnel_packet` (``route.address`` as the
        assigned address) followed by a lookup of :func:`route_key`, and is
        ``DETACHED`` for a route no longer in the table; ``ECHO_REQUEST`` is
        the one addition (see the module docstring).
        """
        if not route.routed:
            return _DETACHED
        size = len(packet)
        found = _LAYOUTS.get(packet[9]) if size >= _SHORTEST else None
        if found is None or size < found[0].size:
            return self._from_tunnel_reference(route, packet)
        layout, ip_destination = found
        (
            first,
            next_hdr,
            units,
            payload_len,
            path_type,
            type_len,
            _,
            dst_ia,
            src_ia,
            dst_host,
            src_host,
            meta,
        ) = layout.unpack_from(packet)
        if first >> 28 != SCION_VERSION or units < MIN_HDR_LEN_UNITS:
            return _COMMON_HEADER
        hdr_len = units * 4
        path_at = layout.size - META_LEN
        if path_at > hdr_len:
            return _ADDRESS_HEADER
        if (
            type_len & 0xF != route.src_type_len
            or src_ia != route.src_ia
            or src_host != route.src_host
        ):
            return _SOURCE
        if path_type != _STANDARD:
            return _PATH_TYPE
        # The standard path's rules (standard_path_problem), inlined: a call costs more.
        seg0, seg1, seg2 = meta >> 12 & 0x3F, meta >> 6 & 0x3F, meta & 0x3F
        if size < hdr_len or not seg0 or (seg2 and not seg1):
            return _PATH
        infos = 1 + (seg1 != 0) + (seg2 != 0)
        hops = seg0 + seg1 + seg2
        if (
            hdr_len - path_at != META_LEN + INFO_LEN * infos + HOP_LEN * hops
            or meta >> 30 >= infos
            or meta >> 24 & 0x3F >= hops
        ):
            return _PATH
        if size - hdr_len != payload_len:
            return _SIZE
        if ip_destination:
            target = self._routes.get(dst_ia + dst_host)
            if target is not None:
                return target
            if (
                dst_host in self._gateway_hosts
                and dst_ia == src_ia
                and next_hdr == _SCMP
                and payload_len >= _ECHO_LEN
                and packet[hdr_len] == _ECHO_TYPE
                and packet[hdr_len + 1] == 0
            ):
                return _ECHO
        return _UNDERLAY

    def from_underlay(self, packet: bytes) -> R | Verdict:
        """The tunnel whose address is ``packet``'s destination, else why there is none.

        Agrees with a lookup of :func:`route_key` (None: ``UNPARSABLE``).
        """
        size = len(packet)
        if size < _DST_HOST_AT + 4:
            return _UNPARSABLE
        length = _HOST_LENGTHS.get(packet[9] >> 4)
        if length is None or size < _DST_HOST_AT + length:
            return _UNPARSABLE
        target = self._routes.get(packet[12:20] + packet[_DST_HOST_AT : _DST_HOST_AT + length])
        return _UNKNOWN if target is None else target

    def _from_tunnel_reference(self, route: R, packet: bytes) -> R | Verdict:
        """The odd packets (short, or a source that is no IP host): the reference decides."""
        violation = check_tunnel_packet(packet, route.address)
        if violation is not None:
            return _OF_VIOLATION[violation.kind]
        key = route_key(packet)  # not reached: every valid packet fits its layout
        target = self._routes.get(key) if key is not None else None
        return _UNDERLAY if target is None else target
