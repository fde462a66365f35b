"""Prometheus metrics of the tunnel library (the reference's two counters).

The counters are plain integers, incremented once per datagram by
:class:`~snaptun.aio.server.Sender` and :class:`~snaptun.aio.server.Receiver`
and read by a collector at scrape time: a prometheus ``Counter`` takes a lock
on every increment, which costs more than the rest of a forwarded packet's
bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class Metrics:
    """Datagram counters; pass a registry to keep several servers (or tests) apart.

    Exported as ``snaptun_datagrams_sent_total`` and ``snaptun_datagrams_received_total``.
    Single-threaded by design: the counters are incremented on the event loop only.
    """

    __slots__ = ("received", "registry", "sent")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.sent = 0
        """Datagrams sent to snaptun clients."""
        self.received = 0
        """Datagrams received from snaptun clients."""
        self.registry.register(_Collector(self))

    @property
    def datagrams_sent_total(self) -> int:
        """The value exported as ``snaptun_datagrams_sent_total``."""
        return self.sent

    @property
    def datagrams_received_total(self) -> int:
        """The value exported as ``snaptun_datagrams_received_total``."""
        return self.received

    @classmethod
    def isolated(cls) -> Metrics:
        """Metrics in a registry of their own."""
        return cls(CollectorRegistry())


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self.collect()  # the names, so that a registry refuses a second set

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "snaptun_datagrams_sent", "Datagrams sent to snaptun clients.", self._metrics.sent
        )
        yield CounterMetricFamily(
            "snaptun_datagrams_received",
            "Datagrams received from snaptun clients.",
            self._metrics.received,
        )
