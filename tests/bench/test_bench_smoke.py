"""The parts of ``scripts/bench`` that need no long timing: table, metrics deltas, gateway start.

No test here asserts a speed: the short gateway run checks only that the
packets took the forwarding path and that every process is gone afterwards.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import bench.gateway as gw
import bench.run as run_mod
import pytest
from bench.procs import Plan

from tests.conftest import SNAPTUN_REF

TESTDATA = SNAPTUN_REF.parents[1] / "testdata"


def _echo(dgram: float, p50: float, p99: float, cpu: float = 50.0) -> dict[str, Any]:
    return {
        "ok": True,
        "dgram_per_s": dgram,
        "mbit_per_s": dgram * 8e-4,
        "rtt_us_p50": p50,
        "rtt_us_p99": p99,
        "loss_pct": 0.0,
        "server_cpu_pct": cpu,
    }


def _sample_results() -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for size in run_mod.SIZES:
        results[f"gw_echo_{size}"] = _echo(20_000, 3000, 4000, 100)
        results[f"ours_echo_{size}"] = _echo(48_000, 1000, 1500, 100)
        results[f"ref_echo_{size}"] = _echo(80_000, 500, 800, 90)
        results[f"udp_echo_{size}"] = _echo(150_000, 300, 400, 99)
    for variant in ("resume", "full"):
        results[f"ours_setup_{variant}"] = {"ok": True, "setups_per_s": 200.0}
        results[f"ref_setup_{variant}"] = {"ok": True, "setups_per_s": 600.0}
        results[f"gw_setup_{variant}"] = {"ok": False, "error": "boom", "setups_per_s": 1.0}
    return results


def _row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    found = [row for row in rows if row["metric"] == metric]
    assert len(found) == 1, metric
    return found[0]


def test_table_puts_gateway_beside_the_echo_server_with_ratios_to_the_rust_echo() -> None:
    rows = run_mod.build_table(_sample_results())
    gateway = _row(rows, "gateway 1200 B, datagrams/s")
    assert (gateway["ours"], gateway["ref"], gateway["udp"]) == (20_000, 80_000, 150_000)
    assert (gateway["ours_over_ref"], gateway["ours_over_udp"]) == ("0.25", "0.13")
    assert _row(rows, "echo-server 1200 B, datagrams/s")["ours_over_ref"] == "0.60"
    p99 = _row(rows, "gateway 100 B, RTT p99 (us)")
    assert (p99["ours"], p99["ref"], p99["ours_over_ref"]) == (4000, 800, "5.00")
    assert _row(rows, "gateway 100 B, loss %")["ours_over_ref"] == "-"
    # A failed run shows as missing, never as its partial figure.
    failed = _row(rows, "gateway setups/s, full handshakes")
    assert (failed["ours"], failed["ours_over_ref"]) == (None, "-")
    assert _row(rows, "echo-server setups/s, full handshakes")["ours_over_ref"] == "0.33"
    text = run_mod.render_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert "| gateway 1200 B, datagrams/s" in text


_BEFORE = """\
# HELP snaptun_gateway_packets_total Packets forwarded, by direction.
# TYPE snaptun_gateway_packets_total counter
snaptun_gateway_packets_total{direction="tunnel_to_underlay"} 10.0
snaptun_gateway_packets_total{direction="underlay_to_tunnel"} 10.0
snaptun_gateway_packets_total{direction="tunnel_to_tunnel"} 0.0
snaptun_gateway_active_tunnels 1.0
"""
_AFTER = """\
snaptun_gateway_packets_total{direction="tunnel_to_underlay"} 1010
snaptun_gateway_packets_total{direction="underlay_to_tunnel"} 1008
snaptun_gateway_packets_total{direction="tunnel_to_tunnel"} 0
snaptun_gateway_drops_total{reason="tunnel_queue_full"} 2.0
snaptun_gateway_quic_refused_total{reason="source_rate"} 3
snaptun_gateway_active_tunnels 0.0
"""


def test_metrics_deltas_name_directions_and_drop_reasons() -> None:
    grown = gw.delta(gw.parse_metrics(_BEFORE), gw.parse_metrics(_AFTER))
    assert "snaptun_gateway_active_tunnels" not in grown  # a gauge, not a counter
    summary = gw.forwarding(grown, received=1000)
    assert summary["tunnel_to_underlay"] == 1000
    assert summary["underlay_to_tunnel"] == 998
    assert summary["drops"] == {"tunnel_queue_full": 2}
    assert summary["quic_refused"] == {"source_rate": 3}
    assert summary["path_ok"] is False  # fewer packets came back than the bench received
    assert gw.forwarding(grown, received=998)["path_ok"] is True
    assert gw.forwarding(grown)["path_ok"] is None
    assert "drops tunnel_queue_full 2" in gw.describe(summary)


def test_serve_argv_carries_every_bench_setting_and_stays_on_loopback(tmp_path: Path) -> None:
    argv = gw.serve_argv(tmp_path, tmp_path / "c.pem", tmp_path / "k.pem", "127.0.0.1:9")
    assert "--retry=never" in argv
    assert "--pool=10.0.0.0/24" in argv
    assert "--underlay-next-hop=127.0.0.1:9" in argv
    assert all(
        a.split("=", 1)[1].startswith("127.0.0.1:")
        for a in argv
        if a.startswith(("--listen=", "--metrics=", "--underlay-bind="))
    )
    assert gw.settings_line() in " ".join(argv)


def test_capacity_hook_skips_without_the_module_and_reports_its_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_mod, "REPO", tmp_path)
    result, rows = run_mod._capacity(tmp_path / "ref", tmp_path, quick=True)
    assert result["ok"] is True
    assert "skipped" in result
    assert rows == []

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "capacity.py").write_text("")
    calls: list[tuple[Path, Path, bool]] = []

    def fake_run(ref: Path, work: Path, quick: bool) -> dict[str, Any]:
        calls.append((ref, work, quick))
        return {"ok": True, "steps": [1]}

    def fake_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"metric": f"steps {results['steps']}", "ours": 1.0, "digits": 0}]

    fake = types.SimpleNamespace(run=fake_run, rows=fake_rows)
    monkeypatch.setitem(sys.modules, "bench.capacity", fake)
    result, rows = run_mod._capacity(tmp_path / "ref", tmp_path / "w", quick=False)
    assert calls == [(tmp_path / "ref", tmp_path / "w", False)]
    assert result == {"ok": True, "steps": [1]}
    assert rows[0]["metric"] == "steps [1]"

    def broken(ref: Path, work: Path, quick: bool) -> dict[str, Any]:
        raise RuntimeError("no holders")

    fake.run = broken
    result, rows = run_mod._capacity(tmp_path / "ref", tmp_path, quick=True)
    assert result == {"ok": False, "error": "RuntimeError: no holders"}
    assert rows == []


@pytest.mark.skipif(not SNAPTUN_REF.exists(), reason=f"snaptun-ref not found at {SNAPTUN_REF}")
def test_short_gateway_round_trip_takes_the_forwarding_path(tmp_path: Path) -> None:
    cert, key = TESTDATA / "localhost-cert.pem", TESTDATA / "localhost-key.pem"
    plan = Plan(duration=1, warmup=0.5, setups=5)
    with gw.start_gateway(SNAPTUN_REF, tmp_path, cert, key) as gateway:
        assert "retry = " in gateway.config_toml
        result = gw.gateway_echo_bench(SNAPTUN_REF, gateway, 100, plan, cert)
        setups = gw.gateway_setup_bench(SNAPTUN_REF, gateway, plan, cert, resumption=True)
        procs = (gateway.server.proc, gateway.swap.proc)
    assert result["ok"], result
    assert result["ipv4"] is True
    assert result["scion_dst"] == gw.SCION_DST
    forwarded = result["forwarding"]
    assert forwarded["path_ok"] is True, forwarded
    assert forwarded["tunnel_to_tunnel"] == 0
    assert setups["ok"], setups
    assert setups["forwarding"]["setups"] == {"accepted": plan.setups}
    assert setups["forwarding"]["quic_refused"] == {}
    assert all(proc.poll() is not None for proc in procs)
