"""The data plane's wiring: tunnel sinks, the batched underlay socket on loopback, the counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from snaptun.aio import udp
from snaptun.core.addressing import EndhostAddress
from snaptun.errors import ReceiveConnectionClosed
from snaptun.gateway.dataplane import Dataplane, TunnelPort
from snaptun.gateway.metrics import GatewayMetrics
from tests.gateway._fakes import FakeControl, FakeSender
from tests.gateway._gateway import scion_udp

ME = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
OTHER = EndhostAddress.parse("1-ff00:0:110,10.0.0.6")
FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")


class FakeReceiver:
    """A tunnel's Receiver as the data plane uses it: only the batch sink."""

    def __init__(self, *, closed: bool = False) -> None:
        self.sink: Callable[[list[bytes]], None] | None = None
        self.closed = closed

    def set_batch_sink(self, sink: Callable[[list[bytes]], None] | None) -> None:
        if sink is not None and self.closed:
            raise ReceiveConnectionClosed
        self.sink = sink


def _plane(**settings: Any) -> tuple[Dataplane, GatewayMetrics]:
    metrics = GatewayMetrics()
    settings.setdefault("next_hop", ("127.0.0.1", 9))
    return Dataplane(metrics, gateway_addresses=[], **settings), metrics


def _attach(
    plane: Dataplane, address: EndhostAddress, receiver: FakeReceiver | None = None
) -> tuple[TunnelPort, FakeSender]:
    sender = FakeSender(address)
    port = plane.attach(sender, FakeControl(address), receiver)  # type: ignore[arg-type]
    return port, sender


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_tunnel_s_packets_come_in_through_its_sink_until_it_is_released() -> None:
    plane, metrics = _plane()
    receiver = FakeReceiver()
    me, _ = _attach(plane, ME, receiver)
    _, other_sender = _attach(plane, OTHER)
    assert receiver.sink is not None
    receiver.sink([scion_udp(ME, OTHER, b"hi")])
    assert other_sender.sent == [scion_udp(ME, OTHER, b"hi")]
    assert _sample(metrics, "snaptun_gateway_packets_total", direction="tunnel_to_tunnel") == 1
    plane.release(me)
    assert receiver.sink is None
    plane.from_underlay(scion_udp(FOREIGN, ME, b"x"))  # the route went with it
    assert _sample(metrics, "snaptun_gateway_drops_total", reason="unknown_destination") == 1


def test_a_replaced_tunnel_keeps_its_sink_and_its_packets_are_dropped_as_detached() -> None:
    plane, metrics = _plane()
    receiver = FakeReceiver()
    me, _ = _attach(plane, ME, receiver)
    _, other_sender = _attach(plane, OTHER)
    plane.detach(me)  # what the newest-wins registry does when a newer tunnel takes ME
    assert receiver.sink is not None
    receiver.sink([scion_udp(ME, OTHER, b"stale")])
    assert other_sender.sent == []
    assert _sample(metrics, "snaptun_gateway_drops_total", reason="tunnel_detached") == 1


def test_a_tunnel_closed_before_its_sink_is_set_is_routed_but_not_fed() -> None:
    plane, _ = _plane()
    port, _ = _attach(plane, ME, FakeReceiver(closed=True))
    assert port.receiver is None
    plane.release(port)  # nothing to clear
    assert not port.routed


def test_counters_are_exported_under_the_prometheus_names_from_the_start() -> None:
    _, metrics = _plane()
    text = generate_latest(metrics.registry).decode()
    for direction in ("tunnel_to_underlay", "underlay_to_tunnel", "tunnel_to_tunnel"):
        assert f'snaptun_gateway_packets_total{{direction="{direction}"}} 0.0' in text
        assert f'snaptun_gateway_bytes_total{{direction="{direction}"}} 0.0' in text
    assert "snaptun_gateway_scmp_suppressed_total 0.0" in text
    assert "snaptun_datagrams_sent_total 0.0" in text
    assert "snaptun_datagrams_received_total 0.0" in text
    assert "reason=" not in text  # no drop seen, no drop series
    metrics.drop("tunnel_queue_full")
    metrics.drop("tunnel_queue_full")
    text = generate_latest(metrics.registry).decode()
    assert 'snaptun_gateway_drops_total{reason="tunnel_queue_full"} 2.0' in text


class _Router(asyncio.DatagramProtocol):
    """A UDP socket standing for the border router: collects what the gateway sends it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    def error_received(self, exc: Exception) -> None:
        raise AssertionError(exc)

    async def wait_for(self, count: int) -> list[bytes]:
        for _ in range(500):
            if len(self.received) >= count:
                break
            await asyncio.sleep(0.01)
        return self.received


async def _router() -> tuple[_Router, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, router = await loop.create_datagram_endpoint(_Router, local_addr=("127.0.0.1", 0))
    return router, transport.get_extra_info("sockname")[:2]


@pytest.mark.parametrize("mode", ["native", "python", "plain"])
async def test_packets_cross_the_underlay_socket_both_ways(mode: udp.Mode) -> None:
    router, router_address = await _router()
    plane, metrics = _plane(next_hop=router_address, underlay_mode=mode)
    await plane.open_underlay(("127.0.0.1", 0))
    try:
        assert plane.underlay is not None
        assert plane.underlay.mode == mode
        me, me_sender = _attach(plane, ME)
        outbound = [scion_udp(ME, FOREIGN, b"out-%02d" % i) for i in range(40)]
        for packet in outbound:
            plane.from_tunnel(me, packet)
        assert plane.underlay_queue_bytes() == sum(map(len, outbound))  # one write, later
        assert await router.wait_for(40) == outbound
        assert plane.underlay_queue_bytes() == 0
        assert router.transport is not None
        inbound = [scion_udp(FOREIGN, ME, b"in-%02d" % i) for i in range(20)]
        for packet in inbound:
            router.transport.sendto(packet, plane.underlay_address)
        router.transport.sendto(b"not scion", plane.underlay_address)
        for _ in range(500):
            if len(me_sender.sent) >= 20:
                break
            await asyncio.sleep(0.01)
        assert me_sender.sent == inbound
        await asyncio.sleep(0.02)
        packets = "snaptun_gateway_packets_total"
        assert _sample(metrics, packets, direction="tunnel_to_underlay") == 40
        assert _sample(metrics, packets, direction="underlay_to_tunnel") == 20
        assert _sample(metrics, "snaptun_gateway_bytes_total", direction="tunnel_to_underlay") == (
            sum(map(len, outbound))
        )
        assert _sample(metrics, "snaptun_gateway_drops_total", reason="underlay_unparsable") == 1
    finally:
        plane.close()
        if router.transport is not None:
            router.transport.close()


async def test_a_full_underlay_queue_drops_and_counts() -> None:
    router, router_address = await _router()
    plane, metrics = _plane(next_hop=router_address, underlay_queue_bytes=1)
    await plane.open_underlay(("127.0.0.1", 0))
    try:
        me, _ = _attach(plane, ME)
        packets = [scion_udp(ME, FOREIGN, b"%d" % i) for i in range(5)]
        for packet in packets:  # one round of the loop: the first fills the queue
            plane.from_tunnel(me, packet)
        assert _sample(metrics, "snaptun_gateway_drops_total", reason="underlay_queue_full") == 4
        assert await router.wait_for(1) == packets[:1]
        plane.from_tunnel(me, packets[1])  # written: room again
        assert await router.wait_for(2) == packets[:2]
        plane.close()
        plane.from_tunnel(me, packets[2])
        assert _sample(metrics, "snaptun_gateway_drops_total", reason="underlay_closed") == 1
    finally:
        plane.close()
        if router.transport is not None:
            router.transport.close()


def test_a_burst_from_the_underlay_goes_to_each_tunnel_in_runs() -> None:
    plane, metrics = _plane()
    _, me = _attach(plane, ME)
    _, other = _attach(plane, OTHER)
    burst = [
        scion_udp(FOREIGN, ME, b"1"),
        scion_udp(FOREIGN, ME, b"2"),
        scion_udp(FOREIGN, OTHER, b"3"),
        b"not scion",
        scion_udp(FOREIGN, ME, b"4"),
    ]
    plane.from_underlay_batch([(packet, ("127.0.0.1", 9)) for packet in burst])
    assert me.batches == [burst[:2], burst[4:]]  # one send per run of one tunnel
    assert other.batches == [burst[2:3]]
    packets = "snaptun_gateway_packets_total"
    assert _sample(metrics, packets, direction="underlay_to_tunnel") == 4
    assert _sample(metrics, "snaptun_gateway_bytes_total", direction="underlay_to_tunnel") == sum(
        len(p) for p in burst if p != b"not scion"
    )
    assert _sample(metrics, "snaptun_gateway_drops_total", reason="underlay_unparsable") == 1


def test_a_burst_a_tunnel_cannot_take_whole_is_sent_packet_by_packet() -> None:
    plane, metrics = _plane()
    _, me = _attach(plane, ME)
    me.take_batches = False  # as a Sender whose queue lacks room for all, or changed address
    burst = [scion_udp(FOREIGN, ME, b"%d" % i) for i in range(3)]
    plane.from_underlay_batch([(packet, ()) for packet in burst])
    assert (me.batches, me.sent) == ([], burst)
    assert _sample(metrics, "snaptun_gateway_packets_total", direction="underlay_to_tunnel") == 3


async def test_a_tunnel_burst_is_policed_per_packet_and_leaves_in_one_underlay_call() -> None:
    router, router_address = await _router()
    plane, metrics = _plane(next_hop=router_address)
    await plane.open_underlay(("127.0.0.1", 0))
    try:
        assert plane.underlay is not None
        calls: list[int] = []
        send_many = plane.underlay.send_many

        def counted(packets: list[bytes], address: Any) -> int:
            calls.append(len(packets))
            return send_many(packets, address)

        plane.underlay.send_many = counted  # type: ignore[method-assign]
        receiver = FakeReceiver()
        _attach(plane, ME, receiver)
        _, other = _attach(plane, OTHER)
        out = [scion_udp(ME, FOREIGN, b"out-%d" % i) for i in range(5)]
        local = scion_udp(ME, OTHER, b"local")
        spoofed = scion_udp(OTHER, FOREIGN, b"spoofed")
        assert receiver.sink is not None
        receiver.sink([out[0], local, out[1], spoofed, *out[2:]])
        assert calls == [5]
        assert other.sent == [local]
        assert await router.wait_for(5) == out
        packets = "snaptun_gateway_packets_total"
        assert _sample(metrics, packets, direction="tunnel_to_underlay") == 5
        assert _sample(metrics, packets, direction="tunnel_to_tunnel") == 1
        assert _sample(metrics, "snaptun_gateway_drops_total", reason="invalid_source_address") == 1
    finally:
        plane.close()
        if router.transport is not None:
            router.transport.close()
