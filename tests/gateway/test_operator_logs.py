"""What a gateway and a client print for an operator: log levels, and reconnects without noise."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli._procs import _env, _read_line
from tests.gateway._gateway import connect_argv, run_gateway
from tests.gateway.test_e2e import tunnel, udp_sink

RUN_TIMEOUT = 30.0


@pytest.mark.parametrize(("level", "events"), [("info", True), ("warning", False)])
async def test_log_level_filters_the_tunnel_events(
    tmp_path: Path, level: str, *, events: bool
) -> None:
    async with udp_sink() as router:
        with run_gateway(
            tmp_path / "state", tmp_path / "gw.log", router.address, "--log-level", level
        ) as gw:
            async with tunnel(gw):
                pass
            code, _ = gw.stop()
    assert code == 0
    lines = gw.log.read_text().splitlines()
    names = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    if events:
        assert {"started", "accepted", "closed", "stopping", "stopped"} <= set(names), lines
    else:
        assert names == [], lines
    # The start-up report is not a log: the operator needs the fingerprint at every level.
    assert any("sha256 fingerprint" in line for line in lines)


def test_connect_reconnects_without_asyncio_noise(tmp_path: Path) -> None:
    """Failed reconnect attempts leave no "Future exception was never retrieved" behind."""
    err_path = tmp_path / "connect.err"
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        argv = connect_argv(
            # 1 s per attempt: long enough for qh3 to fail its handshake waiter (0.3 s is not)
            gw,
            gw.token(),
            "--connect-timeout",
            "1",
            "--max-reconnects",
            "2",
            "-v",
        )
        with err_path.open("w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=_env())
        try:
            first = json.loads(_read_line(proc, RUN_TIMEOUT))
            assert first["event"] == "connected", first
            code, _ = gw.stop()
            assert code == 0
            deadline = time.monotonic() + RUN_TIMEOUT
            assert proc.wait(max(deadline - time.monotonic(), 0.1)) == 1  # reconnects exhausted
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    stderr = err_path.read_text()
    assert stderr.count("cannot connect to the gateway") >= 2, stderr  # it did retry
    assert "never retrieved" not in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_connect_stops_when_nobody_reads_its_output(tmp_path: Path) -> None:
    """A closed stdout (`snaptun connect ... | head -1`) ends connect; no reconnect churn."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with run_gateway(tmp_path / "state", tmp_path / "gw.log", ("127.0.0.1", 9)) as gw:
        try:
            done = subprocess.run(
                connect_argv(gw, gw.token()),
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=RUN_TIMEOUT,
                env=_env(),
                check=False,
            )
        finally:
            os.close(write_end)
        gw.stop()
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""  # no traceback, no "cannot connect ...: Broken pipe" retries
    names = [
        json.loads(line)["event"] for line in gw.log.read_text().splitlines() if line[:1] == "{"
    ]
    assert names.count("accepted") == 1, names
