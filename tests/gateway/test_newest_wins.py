"""End to end: newest wins on a real gateway; an address is never live on two tunnels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from snaptun.constants import REPLACED_CLOSE_CODE, REPLACED_REASON
from snaptun.core.addressing import EndhostAddress
from snaptun.errors import ControlResponseError
from tests.cli._procs import _env
from tests.gateway._gateway import connect_argv, run_gateway, scion_udp, scrape
from tests.gateway.test_e2e import FOREIGN, tunnel, udp_sink

HOLD = 2.0


async def _refused_with(gw: Any, token: str, wanted: EndhostAddress) -> int:
    try:
        async with tunnel(gw, token, [wanted]):
            return 200
    except ControlResponseError as exc:
        return exc.status
    except Exception as exc:  # the gateway closes with code 1 after the 400
        return 400 if "handling address assignment request" in str(exc) else -1


async def test_newer_tunnel_takes_the_address_over_and_the_older_is_closed(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(
            tmp_path / "state", tmp_path / "gw.log", router.address, "--hold", str(HOLD)
        ) as gw:
            x = gw.token(uuid.uuid4())
            async with tunnel(gw, x) as (_, _, first_addr, first):
                async with tunnel(gw, x) as (sender, receiver, second_addr, _):
                    assert second_addr == first_addr
                    lost = await asyncio.wait_for(first.wait_closed(), 5)
                    assert (lost.code, lost.reason) == (REPLACED_CLOSE_CODE, REPLACED_REASON)
                    # Packets to the address reach the newer tunnel only.
                    router.send(scion_udp(FOREIGN, second_addr, b"to-new"), gw.underlay)
                    got = await asyncio.wait_for(receiver.receive(), 5)
                    assert got.endswith(b"to-new")
                    # The newer tunnel may send with the address as source.
                    sender.send(scion_udp(second_addr, FOREIGN, b"from-new"))
                    assert (await router.get()).endswith(b"from-new")
                    # Longer than the hold after the older tunnel ended: the address
                    # is still granted to X, so nobody else gets it.
                    await asyncio.sleep(HOLD + 1)
                    assert await _refused_with(gw, gw.token(uuid.uuid4()), second_addr) == 400
                    m = scrape(gw.metrics)
                    assert m["snaptun_gateway_tunnels_replaced_total"] == 1
                    assert m['snaptun_gateway_close_codes_total{code="0"}'] == 1
                    assert m["snaptun_gateway_active_tunnels"] == 1
                # The last tunnel ended: now the address is held for X, then free.
                await asyncio.sleep(0.3)
                assert await _refused_with(gw, gw.token(uuid.uuid4()), second_addr) == 400
                await asyncio.sleep(HOLD + 1)
                y = gw.token(uuid.uuid4())
                assert await _refused_with(gw, y, second_addr) == 200
            events = [
                json.loads(line) for line in gw.log.read_text().splitlines() if line[:1] == "{"
            ]
            replaced = [e for e in events if e["event"] == "replaced"]
            assert len(replaced) == 1
            assert replaced[0]["address"] == str(first_addr)
            assert replaced[0]["reason"] == REPLACED_REASON


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env()
    )


async def _line(proc: subprocess.Popen[str], timeout: float = 20) -> dict[str, Any]:
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), timeout)
    assert line, "the client exited without output"
    record: dict[str, Any] = json.loads(line)
    return record


async def test_connect_prints_the_close_and_stops_when_replaced(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(tmp_path / "state", tmp_path / "gw.log", router.address) as gw:
            token = gw.token(uuid.uuid4())
            clients: list[subprocess.Popen[str]] = []
            try:
                older = _start(connect_argv(gw, token))
                clients.append(older)
                assert (await _line(older))["event"] == "connected"
                newer = _start(connect_argv(gw, token))
                clients.append(newer)
                assert (await _line(newer))["event"] == "connected"
                closed = await _line(older)
                assert closed["event"] == "closed"
                assert (closed["close_code"], closed["close_reason"]) == (
                    REPLACED_CLOSE_CODE,
                    REPLACED_REASON,
                )
                error = await _line(older)
                assert error["event"] == "error"
                assert error["close_reason"] == REPLACED_REASON
                assert (await _line(older))["event"] == "stopped"
                assert older.wait(10) == 1  # final: no reconnect, non-zero exit
                # The newer one stays up and is the only tunnel.
                assert newer.poll() is None
                assert scrape(gw.metrics)["snaptun_gateway_active_tunnels"] == 1
                newer.terminate()
                assert newer.wait(10) == 0
            finally:
                for proc in clients:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait(10)
                    if proc.stdout is not None:
                        proc.stdout.close()
