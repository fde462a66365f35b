"""Every soak scenario (bench/soak/) at smoke scale: it runs end to end and its verdict is pass.

Each runs a real gateway for a few seconds on loopback; the verdict covers
the probe tunnel's loss, the scenario's own checks (close codes, restarts,
setups), the grant store's ``PRAGMA integrity_check`` and the invariants
(no address granted to two identities or live on two tunnels). The checks
themselves are shown to fail on broken input in test_soak_invariants.py.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest
from bench.soak import SCENARIOS


async def smoke(name: str, tmp_path: Path) -> dict[str, Any]:
    module = importlib.import_module(f"bench.soak.{name}")
    result: dict[str, Any] = await asyncio.wait_for(module.run("smoke", tmp_path), 60)
    assert result["scenario"] == name
    assert result["store"]["integrity_check"] == "ok"
    assert result["invariant_violations"] == []
    assert result["verdict"] == "pass", result["reasons"]
    return result


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n not in ("flood", "kill9", "slow")])
async def test_scenario_passes_at_smoke_scale(name: str, tmp_path: Path) -> None:
    await smoke(name, tmp_path)


async def test_slow_streams_are_reset_and_tunnels_expire_with_code_4(tmp_path: Path) -> None:
    await smoke("slow", tmp_path)


async def test_flood_is_refused_and_the_gateway_holds(tmp_path: Path) -> None:
    result = await smoke("flood", tmp_path)
    refused = result["metrics"]
    assert refused['snaptun_gateway_quic_refused_total{reason="not_initial"}'] > 0
    assert result["probe"]["received"] > 0


async def test_gateway_comes_back_after_each_kill9_with_its_grants(tmp_path: Path) -> None:
    result = await smoke("kill9", tmp_path)
    assert len(result["restarts"]) == 2
    assert all(r["store"]["integrity_check"] == "ok" for r in result["restarts"])
    # Three lives of the gateway, each logged; the clients' identities kept their addresses.
    assert result["events"]["events"]["started"] == 3
    assert result["load"]["client_violations"] == []
