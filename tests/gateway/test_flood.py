"""End to end: a flood of garbage and Initials against a real gateway, then business as usual."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.aio.test_flood import send_flood
from tests.gateway._gateway import run_gateway, scion_udp, scrape
from tests.gateway.test_e2e import FOREIGN, tunnel, udp_sink


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_flood_is_refused_counted_and_the_gateway_stays_small(tmp_path: Path) -> None:
    async with udp_sink() as router:
        with run_gateway(
            tmp_path / "state", tmp_path / "gw.log", router.address, "--handshake-timeout", "1"
        ) as gw:
            async with tunnel(gw) as (sender, _, me, _):
                before = _rss_kib(gw.proc.pid)
                await send_flood(gw.listen, 20000)
                # A new, legitimate setup from another source works right after the flood.
                async with tunnel(gw) as (_, _, other, _):
                    assert other != me
                # The established tunnel still forwards, every packet.
                packets = [scion_udp(me, FOREIGN, b"after-%d" % i) for i in range(20)]
                for packet in packets:
                    sender.send(packet)
                assert [await router.get() for _ in packets] == packets
                await asyncio.sleep(2.5)  # half-open connections time out and are freed
                m = scrape(gw.metrics)
                after = _rss_kib(gw.proc.pid)
            assert m['snaptun_gateway_quic_refused_total{reason="not_initial"}'] > 0
            assert m['snaptun_gateway_quic_refused_total{reason="source_rate"}'] > 0
            assert m["snaptun_gateway_half_open_connections"] == 0
            assert m['snaptun_gateway_setups_total{reason="",result="accepted"}'] == 2
            assert after - before < 40 * 1024, (before, after)  # no growth with the flood
