"""A short run of the flood soak (bench/soak.py): the scenario works end to end."""

from __future__ import annotations

import asyncio

from bench.soak import scenario


async def test_short_flood_soak_runs_and_the_gateway_holds() -> None:
    result = await asyncio.wait_for(scenario(3000, 1.0), 60)
    assert result["tunnel_sent"] > 0
    assert result["tunnel_received"] > 0
    refused = result["metrics"]
    assert refused['snaptun_gateway_quic_refused_total{reason="not_initial"}'] > 0
    # RSS after the flood stays near the start (no state per flood datagram).
    assert result["rss_kib_5s_after"] - result["rss_kib_start"] < 40 * 1024
