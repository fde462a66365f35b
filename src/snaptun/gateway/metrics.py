"""Prometheus metrics of the gateway (besides the library's two datagram counters).

Counters touched per packet (packets, bytes, drops, SCMP answers) are plain
integers in :class:`ForwardingCounters`, exported by a collector at scrape
time; a prometheus ``Counter`` takes a lock per increment, which cost more
than the forwarding decision itself. The rest are ordinary prometheus metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from snaptun.metrics import Metrics

DIRECTIONS = ("tunnel_to_underlay", "underlay_to_tunnel", "tunnel_to_tunnel")
TUNNEL_TO_UNDERLAY, UNDERLAY_TO_TUNNEL, TUNNEL_TO_TUNNEL = range(3)
"""Indexes of :attr:`ForwardingCounters.packets` and ``.bytes``, in :data:`DIRECTIONS` order."""


class ForwardingCounters:
    """The data plane's counters as plain integers; single-threaded (the event loop's).

    ``packets`` and ``bytes`` are indexed by direction (:data:`DIRECTIONS`);
    ``drops`` and ``scmp_sent`` hold only the reasons and codes seen so far, as
    a labelled prometheus counter shows only the series it was asked for.
    """

    __slots__ = ("bytes", "drops", "packets", "scmp_echo_replies", "scmp_sent", "scmp_suppressed")

    def __init__(self) -> None:
        self.packets = [0] * len(DIRECTIONS)
        self.bytes = [0] * len(DIRECTIONS)
        self.drops: dict[str, int] = {}
        self.scmp_sent: dict[str, int] = {}
        self.scmp_suppressed = 0
        self.scmp_echo_replies = 0


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
        self.kicked = Counter(
            "snaptun_gateway_tunnels_kicked",
            "Tunnels an operator closed through the admin endpoint (snaptun status --kick).",
            registry=reg,
        )
        self.internal_errors = Counter(
            "snaptun_gateway_internal_errors",
            "Tunnels closed with code 5 because serving them raised something unexpected.",
            registry=reg,
        )
        self.key_reloads = Counter(
            "snaptun_gateway_token_key_reloads",
            "Reloads of the token key files (SIGHUP or a change), by result (ok/failed).",
            ["result"],
            registry=reg,
        )
        self.store_unavailable = Counter(
            "snaptun_gateway_store_unavailable",
            "Grant writes that failed because the shared grant store (PostgreSQL) was unreachable.",
            registry=reg,
        )
        self.forwarding = ForwardingCounters()
        """The data plane's per-packet counters (plain integers, exported at scrape time)."""
        reg.register(_ForwardingCollector(self.forwarding))
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

    def drop(self, reason: str) -> None:
        """Count one packet dropped for ``reason`` (off the per-packet fast path)."""
        drops = self.forwarding.drops
        drops[reason] = drops.get(reason, 0) + 1

    def watch_free_addresses(
        self, free_count: Callable[[int], int], versions: Iterable[int] = (4, 6)
    ) -> None:
        """Read the allocator's free count at scrape time, for the IP versions that have a pool.

        A version without a pool exports no series, so that "no address left"
        (0) always means a pool ran out.
        """
        for version in versions:
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


class _ForwardingCollector(Collector):
    def __init__(self, counters: ForwardingCounters) -> None:
        self._counters = counters

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the names, so that a registry refuses a second set

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        packets = CounterMetricFamily(
            "snaptun_gateway_packets", "Packets forwarded, by direction.", labels=["direction"]
        )
        octets = CounterMetricFamily(
            "snaptun_gateway_bytes", "Bytes forwarded, by direction.", labels=["direction"]
        )
        for index, direction in enumerate(DIRECTIONS):
            packets.add_metric([direction], counters.packets[index])
            octets.add_metric([direction], counters.bytes[index])
        yield packets
        yield octets
        yield _labelled(
            "snaptun_gateway_drops", "Packets dropped, by reason.", "reason", counters.drops
        )
        yield _labelled(
            "snaptun_gateway_scmp_sent",
            "SCMP Parameter Problem messages sent into tunnels, by code.",
            "code",
            counters.scmp_sent,
        )
        yield CounterMetricFamily(
            "snaptun_gateway_scmp_suppressed",
            "SCMP answers not sent because the tunnel's answer rate was exceeded.",
            value=counters.scmp_suppressed,
        )
        yield CounterMetricFamily(
            "snaptun_gateway_scmp_echo_replies",
            "SCMP Echo Replies the gateway sent to pings of its own address.",
            value=counters.scmp_echo_replies,
        )


def _labelled(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


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
