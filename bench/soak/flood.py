"""Scenario ``flood``: garbage UDP and fake QUIC Initials against the gateway's QUIC port.

A flood of ``datagrams`` over ``seconds`` from another loopback address
(127.0.0.2), three in four shaped as QUIC v1 Initials with fresh connection
IDs (1200 bytes), the rest random (1300 bytes). Meanwhile the probe tunnel
streams through the gateway and a new client sets up a tunnel every second.
Pass: probe loss within the scale's bound, every setup during the flood
worked, RSS 5 s after the flood within 40 MiB of the start, CPU after the
flood back under 10 %, the store and event invariants hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from bench.soak.harness import (
    Probe,
    Router,
    Sampler,
    Verdict,
    finish,
    gateway,
    judge_probe,
    run_load,
    setups_during,
    timed,
)

FLOOD_SOURCE = "127.0.0.2"
SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"datagrams": 3000, "seconds": 1.5, "after": 2.0, "max_loss_pct": 5.0},
    "full": {"datagrams": 200_000, "seconds": 10.0, "after": 5.0, "max_loss_pct": 1.0},
}


def fake_initial() -> bytes:
    """A datagram shaped as a QUIC v1 Initial with fresh connection IDs (random inside)."""
    head = b"\xc3\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
    rest = 1200 - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


async def load(params: dict[str, Any]) -> dict[str, Any]:
    """The flood itself (run in the worker process); returns how long it took."""
    loop = asyncio.get_running_loop()
    count, seconds = params["datagrams"], params["seconds"]
    started = loop.time()
    target = tuple(params["target"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOOD_SOURCE, 0))
        sock.setblocking(False)
        for n in range(count):
            with contextlib.suppress(BlockingIOError):
                sock.sendto(os.urandom(1300) if n % 4 == 0 else fake_initial(), target)
            if n % 200 == 0:
                await asyncio.sleep(max(started + seconds * n / count - loop.time(), 0))
    return {"sent": count, "seconds": round(loop.time() - started, 2)}


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "flood", "scale": scale, "params": p}
    verdict = Verdict()
    with timed(out):
        async with Router.running() as router:
            with gateway(work, router) as gw:
                sampler = Sampler(gw.proc.pid)
                async with Probe.running_on(gw, router) as probe:
                    await asyncio.sleep(0.5)
                    out["before"] = sampler.snapshot()
                    params = {**p, "target": list(gw.listen)}
                    flooding = asyncio.ensure_future(run_load("flood", params, p["seconds"] + 60))
                    watching = asyncio.ensure_future(sampler.watch())
                    setups = asyncio.ensure_future(setups_during(gw, flooding))
                    out["probe"] = await probe.measure(flooding)
                    out["load"] = await flooding
                    out["setups_during"] = await setups
                    watching.cancel()
                    out["peak"] = {"rss_kib": sampler.peak_rss_kib, "fds": sampler.peak_fds}
                    cpu_after = await sampler.cpu_pct(p["after"])
                    out["after"] = {**sampler.snapshot(), "cpu_pct": cpu_after}
                judge_probe(verdict, out["probe"], p["max_loss_pct"])
                verdict.check("load_ran", "error" not in out["load"], out["load"])
                verdict.check(
                    "setups_during", out["setups_during"]["failed"] == 0, out["setups_during"]
                )
                grown = out["after"]["rss_kib"] - out["before"]["rss_kib"]
                verdict.check("rss_back", grown < 40 * 1024, f"RSS +{grown} KiB after the flood")
                verdict.check("cpu_back", cpu_after < 10, f"CPU {cpu_after}% after the flood")
                return finish(out, verdict, gw, work)
