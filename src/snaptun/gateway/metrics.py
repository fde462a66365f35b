"""Prometheus metrics of the gateway (besides the library's two datagram counters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snaptun.metrics import Metrics

DIRECTIONS = ("tunnel_to_underlay", "underlay_to_tunnel", "tunnel_to_tunnel")


class GatewayMetrics:
    """Every counter and gauge ``snaptun serve`` exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.library = Metrics(reg)
        self.active_tunnels = Gauge(
            "snaptun_gateway_active_tunnels", "Tunnels currently set up.", registry=reg
        )
        self.setups = Counter(
            "snaptun_gateway_setups",
            "Tunnel setups by result (accepted/refused) and reason.",
            ["result", "reason"],
            registry=reg,
        )
        self.closes = Counter(
            "snaptun_gateway_close_codes",
            "Connections closed by the gateway, by application close code.",
            ["code"],
            registry=reg,
        )
        self.replaced = Counter(
            "snaptun_gateway_tunnels_replaced",
            "Tunnels closed because a newer tunnel of the same identity took their grant over.",
            registry=reg,
        )
        self.internal_errors = Counter(
            "snaptun_gateway_internal_errors",
            "Tunnels closed with code 5 because serving them raised something unexpected.",
            registry=reg,
        )
        self.packets = Counter(
            "snaptun_gateway_packets",
            "Packets forwarded, by direction.",
            ["direction"],
            registry=reg,
        )
        self.bytes = Counter(
            "snaptun_gateway_bytes", "Bytes forwarded, by direction.", ["direction"], registry=reg
        )
        self.drops = Counter(
            "snaptun_gateway_drops", "Packets dropped, by reason.", ["reason"], registry=reg
        )
        self.scmp_sent = Counter(
            "snaptun_gateway_scmp_sent",
            "SCMP Parameter Problem messages sent into tunnels, by code.",
            ["code"],
            registry=reg,
        )
        self.scmp_suppressed = Counter(
            "snaptun_gateway_scmp_suppressed",
            "SCMP error answers not sent because the tunnel's answer rate was exceeded.",
            registry=reg,
        )
        self.queue_depth = Gauge(
            "snaptun_gateway_queue_depth",
            "Datagrams (tunnels) or bytes (underlay) waiting in a queue.",
            ["queue"],
            registry=reg,
        )
        self.free_addresses = Gauge(
            "snaptun_gateway_free_addresses",
            "Addresses the allocator can still grant, by IP version.",
            ["ip_version"],
            registry=reg,
        )
        # Pre-create the labelled series so that zeros are visible from the start.
        for direction in DIRECTIONS:
            self.packets.labels(direction)
            self.bytes.labels(direction)

    def watch_free_addresses(self, free_count: Callable[[int], int]) -> None:
        """Read the allocator's free count at scrape time."""
        for version in (4, 6):
            self.free_addresses.labels(str(version)).set_function(_reader(free_count, version))

    def watch_admission(
        self,
        refused: Callable[[], Mapping[str, int]],
        half_open: Callable[[], int],
        handshake_timeouts: Callable[[], int],
    ) -> None:
        """Export the QUIC endpoint's admission counters (plain integers) at scrape time."""
        self.registry.register(_AdmissionCollector(refused, half_open, handshake_timeouts))

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Read a queue's depth at scrape time."""
        self.queue_depth.labels(name).set_function(lambda: float(depth()))


class _AdmissionCollector(Collector):
    def __init__(
        self,
        refused: Callable[[], Mapping[str, int]],
        half_open: Callable[[], int],
        handshake_timeouts: Callable[[], int],
    ) -> None:
        self._refused = refused
        self._half_open = half_open
        self._timeouts = handshake_timeouts

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "snaptun_gateway_quic_refused",
            "Datagrams for unknown connections refused before any state was made, by reason.",
            labels=["reason"],
        )
        for reason, count in self._refused().items():
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily(
            "snaptun_gateway_half_open_connections",
            "QUIC connections in their handshake now.",
            value=self._half_open(),
        )
        yield CounterMetricFamily(
            "snaptun_gateway_handshake_timeouts",
            "Half-open QUIC connections closed because their handshake took too long.",
            value=self._timeouts(),
        )


def _reader(free_count: Callable[[int], int], version: int) -> Callable[[], float]:
    return lambda: float(free_count(version))
