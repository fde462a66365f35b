"""The gateway's metrics: free addresses only for the IP versions that have a pool."""

from __future__ import annotations

from prometheus_client import generate_latest

from snaptun.gateway.metrics import GatewayMetrics


def _free_series(metrics: GatewayMetrics) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line.startswith("snaptun_gateway_free_addresses")]


def test_free_addresses_only_for_versions_with_a_pool() -> None:
    metrics = GatewayMetrics()
    metrics.watch_free_addresses(lambda version: 250 if version == 4 else 0, versions=[4])
    assert _free_series(metrics) == ['snaptun_gateway_free_addresses{ip_version="4"} 250.0']


def test_free_addresses_are_read_at_scrape_time() -> None:
    free = {4: 3, 6: 7}
    metrics = GatewayMetrics()
    metrics.watch_free_addresses(free.__getitem__, versions=(4, 6))
    free[4] = 0
    assert _free_series(metrics) == [
        'snaptun_gateway_free_addresses{ip_version="4"} 0.0',
        'snaptun_gateway_free_addresses{ip_version="6"} 7.0',
    ]
