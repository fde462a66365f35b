"""Prometheus metrics of the tunnel library (the reference's two counters)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class Metrics:
    """Datagram counters; pass a registry to keep several servers (or tests) apart."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.datagrams_sent_total = Counter(
            "snaptun_datagrams_sent",
            "Datagrams sent to snaptun clients.",
            registry=self.registry,
        )
        self.datagrams_received_total = Counter(
            "snaptun_datagrams_received",
            "Datagrams received from snaptun clients.",
            registry=self.registry,
        )

    @classmethod
    def isolated(cls) -> Metrics:
        """Metrics in a registry of their own."""
        return cls(CollectorRegistry())
