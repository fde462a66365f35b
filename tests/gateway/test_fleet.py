"""`snaptun connect GW1 GW2`: two real gateways, the rendezvous choice, failover with packets."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from pathlib import Path
from typing import Any

from snaptun.core.addressing import EndhostAddress
from snaptun.core.rendezvous import rendezvous_order
from snaptun.core.tokens import SnapTokenClaims, generate_signing_key, mint_token
from snaptun.keyfiles import write_public_key
from tests.cli._procs import SNAPTUN, _env
from tests.gateway._gateway import GatewayProcess, run_gateway, scion_udp
from tests.gateway.test_e2e import FOREIGN, UdpSink, udp_sink

POOLS = ("10.0.0.0/24", "10.0.1.0/24")  # each gateway owns its part of the address space


def name(gw: GatewayProcess) -> str:
    return f"{gw.listen[0]}:{gw.listen[1]}"


async def line(stream: asyncio.StreamReader, timeout: float = 20.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(stream.readline(), timeout)
    assert raw, "snaptun connect exited"
    record: dict[str, Any] = json.loads(raw)
    return record


async def until(stream: asyncio.StreamReader, event: str) -> dict[str, Any]:
    for _ in range(10):
        record = await line(stream)
        if record["event"] == event:
            return record
    raise AssertionError(f"no {event} line")


Member = tuple[GatewayProcess, UdpSink, str]
"""A gateway of the fleet, its border router and its pool."""


async def both_ways(
    app: UdpSink, local: tuple[str, int], member: Member, me: EndhostAddress, text: bytes
) -> None:
    """A packet from the local app leaves by the member's border router; one comes back."""
    gw, router, _ = member
    out = scion_udp(me, FOREIGN, text)
    app.send(out, local)
    assert await router.get() == out
    back = scion_udp(FOREIGN, me, text + b" back")
    router.send(back, gw.underlay)
    assert await app.get() == back


async def test_connect_to_a_fleet_picks_the_hashed_gateway_and_fails_over(tmp_path: Path) -> None:
    issuer = generate_signing_key()
    public = tmp_path / "issuer.pub.pem"
    write_public_key(issuer.public_key(), public)
    pssid = uuid.uuid4()
    token = mint_token(issuer, SnapTokenClaims(pssid, int(time.time()) + 300))
    async with udp_sink() as router_a, udp_sink() as router_b, udp_sink() as app:
        with (
            run_gateway(tmp_path / "a", tmp_path / "a.log", router_a.address,
                        "--token-key", str(public), "--pool", POOLS[0]) as gw_a,
            run_gateway(tmp_path / "b", tmp_path / "b.log", router_b.address,
                        "--token-key", str(public), "--pool", POOLS[1]) as gw_b,
        ):  # fmt: skip
            fleet: dict[str, Member] = {
                name(gw_a): (gw_a, router_a, POOLS[0]),
                name(gw_b): (gw_b, router_b, POOLS[1]),
            }
            first, second = rendezvous_order(str(pssid), list(fleet))
            preferred, other = fleet[first], fleet[second]
            # listed with the preferred gateway last, each with its own fingerprint
            argv = [*SNAPTUN, "connect", second, first,
                    "--fingerprint", other[0].fingerprint,
                    "--fingerprint", preferred[0].fingerprint,
                    "--token", token, "--connect-timeout", "1"]  # fmt: skip
            with (tmp_path / "connect.log").open("w") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=_env()
                )
            try:
                assert proc.stdout is not None
                up = await until(proc.stdout, "connected")
                assert up["gateway"] == first
                me = EndhostAddress.parse(
                    f"{up['assigned'][0]['isd_as']},{up['assigned'][0]['ip']}"
                )
                assert me.ip in ipaddress.ip_network(preferred[2])
                host, _, port = up["local"].rpartition(":")
                local = (host, int(port))
                await both_ways(app, local, preferred, me, b"to the preferred")

                loop = asyncio.get_running_loop()
                code, _ = await loop.run_in_executor(None, preferred[0].stop)
                assert code == 0
                closed = await until(proc.stdout, "closed")
                assert closed["close_reason"] == "gateway shutting down"
                up = await until(proc.stdout, "connected")
                assert up["gateway"] == second
                me = EndhostAddress.parse(
                    f"{up['assigned'][0]['isd_as']},{up['assigned'][0]['ip']}"
                )
                assert me.ip in ipaddress.ip_network(other[2])  # the other's own address space
                await both_ways(app, local, other, me, b"to the other")
                assert preferred[1].queue.empty()

                proc.terminate()
                assert await asyncio.wait_for(proc.wait(), 10) == 0
                stopped = await until(proc.stdout, "stopped")
                assert (stopped["connects"], stopped["sent"], stopped["received"]) == (2, 2, 2)
                assert stopped["connect_failures"] >= 1  # the stopped gateway was tried first
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
