"""The data plane's routing invariant, without sockets: one address, one attached tunnel."""

from __future__ import annotations

from typing import Any

import pytest

from snaptun.core.addressing import EndhostAddress
from snaptun.gateway.dataplane import Dataplane, RouteConflict
from snaptun.gateway.metrics import GatewayMetrics
from tests.gateway._fakes import FakeControl, FakeSender
from tests.gateway._gateway import scion_udp

ME = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
OTHER = EndhostAddress.parse("1-ff00:0:110,10.0.0.6")
FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")


def _plane() -> tuple[Dataplane, GatewayMetrics]:
    metrics = GatewayMetrics()
    plane = Dataplane(metrics, gateway_addresses=[], next_hop=("127.0.0.1", 9))
    return plane, metrics


def _attach(plane: Dataplane, address: EndhostAddress) -> tuple[Any, FakeSender, FakeControl]:
    sender, control = FakeSender(address), FakeControl(address)
    port = plane.attach(sender, control)  # type: ignore[arg-type]
    return port, sender, control


def _drops(metrics: GatewayMetrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("snaptun_gateway_drops_total", {"reason": reason})
    return value or 0.0


def test_attaching_a_routed_address_is_refused_and_the_route_stays() -> None:
    plane, _ = _plane()
    _, first, _ = _attach(plane, ME)
    with pytest.raises(RouteConflict):
        _attach(plane, ME)
    plane.from_underlay(scion_udp(FOREIGN, ME, b"x"))
    assert len(first.sent) == 1


def test_a_detached_tunnel_can_no_longer_send_with_its_address() -> None:
    plane, metrics = _plane()
    old, _, _ = _attach(plane, ME)
    plane.detach(old)
    _, new_sender, _ = _attach(plane, ME)
    # A packet from the tunnel that lost the route is dropped, not switched or forwarded.
    plane.from_tunnel(old, scion_udp(ME, OTHER, b"stale"))
    assert _drops(metrics, "tunnel_detached") == 1
    plane.from_underlay(scion_udp(FOREIGN, ME, b"y"))
    assert len(new_sender.sent) == 1


def test_reassignment_onto_a_routed_address_is_refused() -> None:
    plane, _ = _plane()
    _, a_sender, a_control = _attach(plane, ME)
    _, b_sender, _ = _attach(plane, OTHER)
    with pytest.raises(RouteConflict):
        a_control.move_to(OTHER)
    # Both routes are as they were.
    plane.from_underlay(scion_udp(FOREIGN, ME, b"a"))
    plane.from_underlay(scion_udp(FOREIGN, OTHER, b"b"))
    assert (len(a_sender.sent), len(b_sender.sent)) == (1, 1)


def test_reassignment_moves_the_route() -> None:
    plane, metrics = _plane()
    _, sender, control = _attach(plane, ME)
    control.move_to(OTHER)
    plane.from_underlay(scion_udp(FOREIGN, ME, b"old"))
    plane.from_underlay(scion_udp(FOREIGN, OTHER, b"new"))
    assert len(sender.sent) == 1
    assert _drops(metrics, "unknown_destination") == 1


def test_scmp_answers_are_rate_limited_per_tunnel_and_counted() -> None:
    metrics = GatewayMetrics()
    now = [100.0]
    gateway_ip = EndhostAddress.parse("1-ff00:0:110,10.0.0.1").ip
    plane = Dataplane(
        metrics,
        gateway_addresses=[gateway_ip],
        next_hop=("127.0.0.1", 9),
        scmp_rate=5.0,
        scmp_burst=3,
        clock=lambda: now[0],
    )
    port, sender, _ = _attach(plane, ME)
    other, other_sender, _ = _attach(plane, OTHER)
    spoofed = scion_udp(FOREIGN, ME, b"spoof")  # source is not the tunnel's address
    for _ in range(1000):
        plane.from_tunnel(port, spoofed)
    assert len(sender.sent) == 3  # the burst, then nothing
    assert _drops(metrics, "invalid_source_address") == 1000  # every drop still counted
    suppressed = metrics.registry.get_sample_value("snaptun_gateway_scmp_suppressed_total")
    assert suppressed == 997
    # Another tunnel has its own bucket.
    plane.from_tunnel(other, scion_udp(FOREIGN, OTHER, b"spoof"))
    assert len(other_sender.sent) == 1
    # Time refills the bucket at the rate.
    now[0] += 1.0
    for _ in range(100):
        plane.from_tunnel(port, spoofed)
    assert len(sender.sent) == 3 + 3  # 5 tokens per second, capped at the burst of 3
