"""Smoke run of the capacity bench: 20 idle tunnels on a real gateway, every process cleaned up.

No figure is asserted: only that the tunnels came up, were seen live by the
gateway and that the table has its rows.
"""

from __future__ import annotations

from pathlib import Path

from bench import capacity

MISSING_REF = Path("/nonexistent/snaptun-ref")  # the Rust curve is not part of the smoke run


def test_twenty_idle_tunnels_are_held_measured_and_tabled(tmp_path: Path) -> None:
    result = capacity.run(MISSING_REF, tmp_path, quick=True, steps=[20])
    assert result["ok"], result.get("error")
    (step,) = result["ours"]["steps"]
    assert step["tunnels"] == 20
    assert step["live"] == 20  # the gateway's own count of live tunnels
    assert result["ref"] is None
    metrics = [row["metric"] for row in capacity.rows(result)]
    assert any("RSS per tunnel" in m for m in metrics)
