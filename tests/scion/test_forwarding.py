"""The fused forwarding step: the same answers as the policy check plus the route lookup.

The reference is :func:`check_tunnel_packet` followed by a lookup of
:func:`route_key`; the step must agree with it on valid packets, on every
policy violation and on arbitrary and mutated bytes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snaptun.core.addressing import EndhostAddress, IsdAs
from snaptun.scion import (
    AddressHeader,
    HopField,
    HostAddress,
    InfoField,
    NextHeader,
    RawHostAddress,
    ScionPacket,
    ServiceAddress,
    StandardPath,
    Violation,
    check_tunnel_packet,
    encode,
)
from snaptun.scion.forwarding import (
    Route,
    RouteConflict,
    RouteTable,
    Verdict,
    address_key,
    route_key,
)

ME = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
ME6 = EndhostAddress.parse("1-ff00:0:110,fd00::5")
OTHER = EndhostAddress.parse("1-ff00:0:110,10.0.0.6")
OTHER6 = EndhostAddress.parse("1-ff00:0:110,fd00::6")
FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")
FOREIGN6 = EndhostAddress.parse("2-ff00:0:220,2001:db8::80")
ENDHOSTS = [ME, ME6, OTHER, OTHER6, FOREIGN, FOREIGN6]

PATH = StandardPath.from_segments(
    [(InfoField(cons_dir=True, timestamp=1), [HopField(cons_egress=1), HopField(cons_ingress=2)])]
)


Host = EndhostAddress | tuple[IsdAs, HostAddress]


def _packet(src: Host, dst: Host, payload: bytes = b"hello", path: StandardPath = PATH) -> bytes:
    src_ia, src_host = (src.isd_as, src.ip) if isinstance(src, EndhostAddress) else src
    dst_ia, dst_host = (dst.isd_as, dst.ip) if isinstance(dst, EndhostAddress) else dst
    address = AddressHeader(dst_ia, src_ia, dst_host, src_host)
    return encode(ScionPacket(address, path, NextHeader.UDP, payload))


def _table(*addresses: EndhostAddress) -> tuple[RouteTable[Route], list[Route]]:
    table: RouteTable[Route] = RouteTable()
    routes = [Route(address) for address in addresses]
    for route in routes:
        table.add(route)
    return table, routes


def reference(table: RouteTable[Route], route: Route, packet: bytes) -> Route | Verdict:
    """The specification: the policy check, then the route lookup."""
    if not route.routed:
        return Verdict.DETACHED
    violation = check_tunnel_packet(packet, route.address)
    if violation is not None:
        return {v.violation: v for v in Verdict if v.violation is not None}[violation.kind]
    key = route_key(packet)
    target = table._routes.get(key) if key is not None else None
    return Verdict.UNDERLAY if target is None else target


# ---- examples ---------------------------------------------------------------------------------


def test_valid_packets_go_to_the_tunnel_of_their_destination_or_the_underlay() -> None:
    table, (me, other, other6) = _table(ME, OTHER, OTHER6)
    assert table.from_tunnel(me, _packet(ME, OTHER)) is other
    assert table.from_tunnel(me, _packet(ME, OTHER6)) is other6  # across IP families
    assert table.from_tunnel(me, _packet(ME, ME)) is me  # to itself: switched like any other
    assert table.from_tunnel(me, _packet(ME, FOREIGN)) is Verdict.UNDERLAY
    service = (ME.isd_as, ServiceAddress(0x0002))
    assert table.from_tunnel(me, _packet(ME, service)) is Verdict.UNDERLAY  # not an IP host


@pytest.mark.parametrize(
    ("mutate", "violation"),
    [
        (lambda p: p[:11], Violation.INVALID_COMMON_HEADER),
        (lambda p: bytes([p[0] | 0x10]) + p[1:], Violation.INVALID_COMMON_HEADER),
        (lambda p: p[:5] + bytes([8]) + p[6:], Violation.INVALID_COMMON_HEADER),
        (lambda p: p[:30], Violation.INVALID_ADDRESS_HEADER),
        (lambda p: p[:20] + bytes([2]) + p[21:], Violation.INVALID_SOURCE_ADDRESS),
        (lambda p: p[:35] + bytes([6]) + p[36:], Violation.INVALID_SOURCE_ADDRESS),
        (lambda p: p[:8] + bytes([0]) + p[9:], Violation.UNKNOWN_PATH_TYPE),
        (lambda p: p[:37] + bytes([0x3F]) + p[38:], Violation.INVALID_PATH),
        (lambda p: p[:50], Violation.INVALID_PATH),
        (lambda p: p[:-1], Violation.INVALID_PACKET_SIZE),
        (lambda p: p + b"\x00", Violation.INVALID_PACKET_SIZE),
    ],
)
def test_each_violation_is_the_policy_s(
    mutate: Callable[[bytes], bytes], violation: Violation
) -> None:
    table, (me, _) = _table(ME, OTHER)
    bad = mutate(_packet(ME, OTHER))
    checked = check_tunnel_packet(bad, ME)
    assert checked is not None
    assert checked.kind is violation
    verdict = table.from_tunnel(me, bad)
    assert isinstance(verdict, Verdict)
    assert verdict.violation is violation
    assert verdict.reason == violation.value


TWO_SEGMENTS = StandardPath.from_segments(
    [(InfoField(timestamp=1), [HopField(cons_egress=1)]), (InfoField(), [HopField()])]
)


def _with_meta(packet: bytes, meta: int) -> bytes:
    return packet[:36] + meta.to_bytes(4, "big") + packet[40:]  # IPv4 to IPv4: path at 36


@pytest.mark.parametrize(
    ("meta", "path"),
    [
        (1 << 30 | 2 << 12, PATH),  # CurrINF 1 of one info field
        (2 << 24 | 2 << 12, PATH),  # CurrHF 2 of two hop fields
        (1 << 12 | 1, TWO_SEGMENTS),  # segment 2 set, segment 1 empty: same length
        (2 << 12, TWO_SEGMENTS),  # lengths that do not add up
        (0, PATH),  # first segment empty
    ],
)
def test_each_rule_of_the_standard_path_is_the_policy_s(meta: int, path: StandardPath) -> None:
    table, (me,) = _table(ME)
    good = _packet(ME, FOREIGN, path=path)
    assert table.from_tunnel(me, good) is Verdict.UNDERLAY
    bad = _with_meta(good, meta)
    checked = check_tunnel_packet(bad, ME)
    assert checked is not None
    assert checked.kind is Violation.INVALID_PATH
    assert table.from_tunnel(me, bad) is Verdict.INVALID_PATH


def test_a_source_that_is_no_ip_host_is_refused_as_the_policy_refuses_it() -> None:
    table, (me,) = _table(ME)
    raw = (ME.isd_as, RawHostAddress(1, bytes(8)))  # type/length code the fast path skips
    bad = _packet(raw, FOREIGN)
    assert table.from_tunnel(me, bad) is Verdict.INVALID_SOURCE_ADDRESS
    assert check_tunnel_packet(bad, ME) is not None


def test_routes_are_one_per_address_and_removed_routes_are_detached() -> None:
    table, (me, other) = _table(ME, OTHER)
    with pytest.raises(RouteConflict):
        table.add(Route(ME))
    assert table.get(ME) is me
    table.remove(me)
    assert not me.routed
    assert table.get(ME) is None
    assert table.from_tunnel(me, _packet(ME, OTHER)) is Verdict.DETACHED
    assert table.from_underlay(_packet(FOREIGN, ME)) is Verdict.UNKNOWN_DESTINATION
    table.remove(me)  # idempotent
    newer = Route(ME)
    table.add(newer)
    assert table.from_underlay(_packet(FOREIGN, ME)) is newer
    assert table.from_tunnel(other, _packet(OTHER, ME)) is newer
    assert len(table) == 2
    assert set(table) == {newer, other}


def test_readdressing_moves_the_route_and_the_accepted_source() -> None:
    table, (me, other) = _table(ME, OTHER)
    with pytest.raises(RouteConflict):
        table.readdress(me, OTHER)
    assert table.get(ME) is me
    assert table.get(OTHER) is other
    assert me.address == ME
    table.readdress(me, ME6)
    assert me.routed
    assert me.address == ME6
    assert me.key == address_key(ME6)
    assert table.get(ME) is None
    assert table.get(ME6) is me
    assert table.from_tunnel(me, _packet(ME, FOREIGN)) is Verdict.INVALID_SOURCE_ADDRESS
    assert table.from_tunnel(me, _packet(ME6, FOREIGN)) is Verdict.UNDERLAY
    assert table.from_underlay(_packet(FOREIGN, ME6)) is me
    table.readdress(me, ME6)  # to its own address: nothing to do, no conflict
    assert table.get(ME6) is me


def test_from_underlay_routes_by_destination() -> None:
    table, (me, me6) = _table(ME, ME6)
    assert table.from_underlay(_packet(FOREIGN, ME)) is me
    assert table.from_underlay(_packet(FOREIGN6, ME6)) is me6
    assert table.from_underlay(_packet(FOREIGN, OTHER)) is Verdict.UNKNOWN_DESTINATION
    assert table.from_underlay(b"not scion") is Verdict.UNPARSABLE
    service = (ME.isd_as, ServiceAddress(0x0002))
    assert table.from_underlay(_packet(FOREIGN, service)) is Verdict.UNPARSABLE
    assert Verdict.UNPARSABLE.reason == "underlay_unparsable"
    assert Verdict.UNKNOWN_DESTINATION.reason == "unknown_destination"
    assert Verdict.DETACHED.reason == "tunnel_detached"


def test_the_source_is_computed_once_per_address_not_per_packet() -> None:
    table, (me,) = _table(ME)
    wire = (me.src_type_len, me.src_ia, me.src_host)
    assert wire == (0, address_key(ME)[:8], ME.ip.packed)
    # What the step compares with is the route's, not the address object's: a packet is
    # judged against the bytes taken at attach (and re-assignment) time.
    me.src_host = OTHER.ip.packed
    assert table.from_tunnel(me, _packet(ME, FOREIGN)) is Verdict.INVALID_SOURCE_ADDRESS
    assert table.from_tunnel(me, _packet(OTHER, FOREIGN)) is Verdict.UNDERLAY


# ---- properties: agreement with the reference -------------------------------------------------

isd_as = st.sampled_from([ME.isd_as, FOREIGN.isd_as, IsdAs(1, 0), IsdAs(0xFFFF, (1 << 48) - 1)])
ip_host = st.one_of(
    st.sampled_from([a.ip for a in ENDHOSTS]),
    st.builds(ipaddress.IPv4Address, st.integers(0, (1 << 32) - 1)),
    st.builds(ipaddress.IPv6Address, st.integers(0, (1 << 128) - 1)),
)
host = st.one_of(
    ip_host,
    ip_host,
    st.builds(ServiceAddress, st.integers(0, 0xFFFF)),
    st.builds(RawHostAddress, st.just(1), st.binary(min_size=8, max_size=8)),
)
sources = st.one_of(st.sampled_from([(a.isd_as, a.ip) for a in ENDHOSTS]), st.tuples(isd_as, host))
destinations = st.one_of(
    st.sampled_from([(a.isd_as, a.ip) for a in ENDHOSTS]), st.tuples(isd_as, host)
)


@st.composite
def standard_path(draw: st.DrawFn) -> StandardPath:
    segments = []
    for _ in range(draw(st.integers(1, 3))):
        hops = [HopField(cons_egress=i) for i in range(draw(st.integers(1, 4)))]
        segments.append((InfoField(timestamp=draw(st.integers(0, 2**32 - 1))), hops))
    total = sum(len(h) for _, h in segments)
    return StandardPath.from_segments(
        segments,
        curr_inf=draw(st.integers(0, len(segments) - 1)),
        curr_hf=draw(st.integers(0, total - 1)),
    )


@st.composite
def packets(draw: st.DrawFn, sender: EndhostAddress | None = None) -> bytes:
    """Valid packets, mostly from ``sender``, to many destinations, then perhaps damaged."""
    source = sender if sender is not None and draw(st.integers(0, 3)) else draw(sources)
    payload = draw(st.binary(max_size=40))
    packet = bytearray(_packet(source, draw(destinations), payload, draw(standard_path())))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(["flip", "set", "truncate", "extend", "cursor", "segments", "hdrlen"])
        )
        if kind == "truncate" and packet:
            del packet[draw(st.integers(0, len(packet) - 1)) :]
        elif kind == "extend":
            packet += draw(st.binary(min_size=1, max_size=8))
        elif kind in {"cursor", "segments"} and len(packet) > 9:
            at = 28 + 4 * ((packet[9] >> 4 & 3) + 1) + 4 * ((packet[9] & 3) + 1)  # path meta
            meta = int.from_bytes(packet[at : at + 4], "big")
            if kind == "cursor":  # CurrINF, CurrHF: at the last field, just past it, or beyond
                segs = [meta >> 12 & 0x3F, meta >> 6 & 0x3F, meta & 0x3F]
                infos = 1 + (segs[1] != 0) + (segs[2] != 0)
                curr_inf = draw(st.sampled_from([infos - 1, infos, 3]))
                curr_hf = draw(st.sampled_from([sum(segs) - 1, sum(segs), 63]))
                meta = (curr_inf & 3) << 30 | (curr_hf & 0x3F) << 24 | meta & 0xFF_FFFF
            else:  # a hop moved between segments, a segment moved past an empty one, any
                segs = [meta >> 12 & 0x3F, meta >> 6 & 0x3F, meta & 0x3F]
                segs = draw(
                    st.sampled_from(
                        [
                            [segs[0] - 1, segs[1] + 1, segs[2]],
                            [segs[0], 0, segs[1] + segs[2]],
                            [0, segs[0], segs[1]],
                            [draw(st.integers(0, 5)) for _ in range(3)],
                        ]
                    )
                )
                segs = [seg & 0x3F for seg in segs]
                meta = meta & 0xFF00_0000 | segs[0] << 12 | segs[1] << 6 | segs[2]
            packet[at : at + 4] = meta.to_bytes(4, "big")[: len(packet) - at]
        elif kind == "hdrlen" and len(packet) > 9:  # HdrLen near the end of the addresses
            path_units = 7 + (packet[9] >> 4 & 3) + (packet[9] & 3) + 2
            packet[5] = max(0, path_units + draw(st.integers(-2, 1)))
        elif packet:
            at = draw(st.integers(0, min(len(packet), 90) - 1))  # mostly headers
            bit = 1 << draw(st.integers(0, 7))
            packet[at] = draw(st.integers(0, 255)) if kind == "set" else packet[at] ^ bit
    return bytes(packet)


@settings(max_examples=1500, deadline=None)
@given(sender=st.sampled_from(ENDHOSTS), detached=st.integers(0, 9), data=st.data())
def test_the_step_agrees_with_policy_check_and_route_key(
    sender: EndhostAddress, detached: int, data: st.DataObject
) -> None:
    packet = data.draw(st.one_of(packets(sender), packets(), st.binary(max_size=120)))
    table, routes = _table(*ENDHOSTS)
    route = routes[ENDHOSTS.index(sender)]
    if not detached:  # now and then: its packets are dropped before any parsing
        table.remove(route)
    assert table.from_tunnel(route, packet) is reference(table, route, packet)


@settings(max_examples=500, deadline=None)
@given(packet=st.one_of(packets(), st.binary(max_size=80)))
def test_from_underlay_agrees_with_route_key(packet: bytes) -> None:
    table, _ = _table(*ENDHOSTS[:4])
    key = route_key(packet)
    expected = (
        Verdict.UNPARSABLE if key is None else table._routes.get(key, Verdict.UNKNOWN_DESTINATION)
    )
    assert table.from_underlay(packet) is expected
