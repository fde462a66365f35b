"""``bench/setups.py`` end to end with a handful of setups: every run succeeds and is reported.

No speed is asserted: only that each server's runs completed and that a CPU
time per setup was read for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import bench.setups as setups_mod
import pytest

from tests.conftest import SNAPTUN_REF


@pytest.mark.skipif(not SNAPTUN_REF.exists(), reason=f"snaptun-ref not found at {SNAPTUN_REF}")
def test_a_few_setups_against_the_gateway_and_the_echo_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--count=4", "--warmup=1", f"--ref={SNAPTUN_REF}", "--only=gateway"]
    assert setups_mod.main([*argv, "--only=echo-server"]) == 0
    out = capsys.readouterr().out
    results_file = Path(out.rsplit("results: ", 1)[1].strip())
    results = json.loads(results_file.read_text())
    assert sorted(results) == [
        "echo-server full",
        "echo-server resume",
        "gateway full",
        "gateway resume",
    ]
    for label, record in results.items():
        assert record["ok"], (label, record)
        assert record["server_cpu_ms_per_setup"] >= 0
        assert label in out
