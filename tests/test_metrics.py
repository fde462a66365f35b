"""The library's two datagram counters: plain integers, exported at scrape time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from snaptun.aio.server import Receiver
from snaptun.errors import ReceiveConnectionClosed
from snaptun.metrics import Metrics


def _value(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_counts_are_read_at_scrape_time_under_the_reference_s_names() -> None:
    metrics = Metrics.isolated()
    assert _value(metrics, "snaptun_datagrams_sent_total") == 0
    metrics.sent += 3
    metrics.received += 2
    assert _value(metrics, "snaptun_datagrams_sent_total") == 3
    assert _value(metrics, "snaptun_datagrams_received_total") == 2
    assert (metrics.datagrams_sent_total, metrics.datagrams_received_total) == (3, 2)


def test_registries_keep_servers_apart_and_one_registry_takes_one_set() -> None:
    registry = CollectorRegistry()
    first = Metrics(registry)
    other = Metrics.isolated()
    first.sent += 1
    assert _value(other, "snaptun_datagrams_sent_total") == 0
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


class _Conn:
    def __init__(self) -> None:
        self.sink: Callable[[list[bytes]], None] | None = None

    def set_datagram_sink(self, sink: Callable[[list[bytes]], None] | None) -> None:
        self.sink = sink


class _Machine:
    is_closed = False


def test_packets_handed_to_a_sink_are_counted_as_received() -> None:
    metrics = Metrics.isolated()
    conn, machine = _Conn(), _Machine()
    receiver: Receiver[Any] = Receiver(conn, machine, metrics)  # type: ignore[arg-type]
    got: list[bytes] = []
    receiver.set_sink(got.append)
    assert conn.sink is not None
    conn.sink([b"a"])
    conn.sink([b"b", b"c"])  # a burst: one by one to a packet sink
    assert got == [b"a", b"b", b"c"]
    assert _value(metrics, "snaptun_datagrams_received_total") == 3
    bursts: list[list[bytes]] = []
    receiver.set_batch_sink(bursts.append)
    conn.sink([b"d", b"e"])
    assert bursts == [[b"d", b"e"]]
    assert _value(metrics, "snaptun_datagrams_received_total") == 5
    receiver.set_sink(None)
    assert conn.sink is None
    machine.is_closed = True
    with pytest.raises(ReceiveConnectionClosed):
        receiver.set_sink(got.append)
    with pytest.raises(ReceiveConnectionClosed):
        receiver.set_batch_sink(bursts.append)
