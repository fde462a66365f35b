"""Scenario ``idle``: N idle tunnels on one gateway; its RSS, CPU and fds with and without them.

``tunnels`` idle tunnels (each its own identity) are opened from one
``bench/holder.py`` process, held for a window in which only keep-alives
cross them, then closed. The idle CPU window comes first, without probe
traffic; the probe streams after it, the idle tunnels still held. Measured: the
gateway's RSS, fds and CPU before, during (the idle window) and after the
holder quits. Pass: every tunnel set up and live (the gateway's own count),
the probe within its loss bound, idle CPU under ``max_idle_cpu_pct``, and
after the close the tunnels gone and the fds back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from bench.soak.harness import (
    REPO,
    Probe,
    Router,
    Sampler,
    Verdict,
    finish,
    gateway,
    judge_probe,
    metrics,
    timed,
)

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"tunnels": 20, "window": 2.0, "max_idle_cpu_pct": 20.0, "max_loss_pct": 5.0},
    "full": {"tunnels": 2000, "window": 15.0, "max_idle_cpu_pct": 20.0, "max_loss_pct": 1.0},
}


class Holder:
    """``bench/holder.py`` as a child process, spoken to over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        answer: dict[str, Any] = json.loads(
            await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        )
        return answer

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, gw: Any) -> Any:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "bench" / "holder.py"),
            f"--connect={gw.listen[0]}:{gw.listen[1]}",
            f"--fingerprint={gw.fingerprint}",
            f"--signing-key={gw.state.signing_key}",
            "--max-seconds=600",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), 20)  # "ready"
            yield cls(proc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    await cls(proc).ask("quit", 30)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _live(gw: Any) -> int:
    return int(metrics(gw).get("snaptun_gateway_active_tunnels", 0))


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "idle", "scale": scale, "params": p}
    verdict = Verdict()
    n = p["tunnels"]
    flags = ("--pool=10.0.0.0/16", "--pool=fd00::/64", f"--max-tunnels={n + 100}")
    with timed(out):
        async with Router.running() as router:
            with gateway(work, router, *flags) as gw:
                sampler = Sampler(gw.proc.pid)
                async with Probe.running_on(gw, router) as probe:
                    await asyncio.sleep(0.5)
                    out["before"] = {
                        **sampler.snapshot(),
                        "cpu_pct": await sampler.cpu_pct(1.0),
                    }
                    async with Holder.running(gw) as holder:
                        opened = await holder.ask(f"open {n}", 60 + n / 20)
                        out["opened"] = opened
                        await asyncio.sleep(1.0)  # handshake leftovers fade
                        idle_cpu = await sampler.cpu_pct(p["window"])  # keep-alives only
                        out["during"] = {
                            **sampler.snapshot(),
                            "cpu_pct": idle_cpu,
                            "live": _live(gw),
                        }
                        out["probe"] = await probe.measure(min(p["window"], 5.0))
                        out["holder"] = await holder.ask("count", 30)
                    await asyncio.sleep(1.0)
                    out["after"] = {
                        **sampler.snapshot(),
                        "cpu_pct": await sampler.cpu_pct(1.0),
                        "live": _live(gw),
                    }
                during, after, before = out["during"], out["after"], out["before"]
                out["rss_per_tunnel_kib"] = round((during["rss_kib"] - before["rss_kib"]) / n, 2)
                judge_probe(verdict, out["probe"], p["max_loss_pct"])
                verdict.check("all_set_up", opened.get("failed") == 0, opened)
                verdict.check("all_live", during["live"] == n + 1, f"{during['live']} of {n} + 1")
                verdict.check(
                    "idle_cpu",
                    during["cpu_pct"] <= p["max_idle_cpu_pct"],
                    f"{during['cpu_pct']}% with {n} idle tunnels",
                )
                verdict.check("tunnels_gone", after["live"] == 1, f"{after['live']} live after")
                grown = after["fds"] - before["fds"]
                verdict.check("fds_back", grown <= 2, f"{grown} more fds after")
                return finish(out, verdict, gw, work)
