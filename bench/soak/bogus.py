"""Scenario ``bogus``: QUIC connections that finish TLS and then never set a tunnel up.

``rounds`` times, ``count`` connections from one process (``concurrency`` handshakes at once):
half only complete the TLS handshake and stay silent; the other half open a
control stream and send the first half of a valid ``renew_session`` request,
never the rest. The gateway must close each of them itself at its setup
timeout (ACCEPT_TIMEOUT, 3 s) with application close code 2, and hold nothing
afterwards. Meanwhile the probe tunnel streams and a new client sets up a
tunnel every second. Pass: every bogus connection closed by the gateway with
code 2 within the timeout plus 3 s, the refusals counted, the probe within its
loss bound, every legitimate setup worked, fds back to where they were, RSS
within 40 MiB of the start after a round and no higher after the next round
than after the first (memory Python keeps for reuse is not a leak; memory
that grows with every round is), the invariants hold.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
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

from snaptun.aio import quic
from snaptun.constants import ACCEPT_TIMEOUT
from snaptun.core.control import RequestKind, encode_request

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"count": 40, "concurrency": 20, "rounds": 1, "after": 1.0, "max_loss_pct": 5.0},
    "full": {"count": 500, "concurrency": 40, "rounds": 2, "after": 3.0, "max_loss_pct": 1.0},
}
CLOSE_SLACK = 3.0
"""Seconds past ACCEPT_TIMEOUT by which the gateway must have closed a bogus connection."""


async def _one(params: dict[str, Any], n: int, gate: asyncio.Semaphore) -> tuple[str, float]:
    host, port = params["target"]
    async with gate:
        manager = quic.connect(host, port, fingerprint=params["fingerprint"], timeout=10)
        try:
            conn = await manager.__aenter__()
        except Exception as exc:
            return f"handshake failed: {type(exc).__name__}", 0.0
    started = time.monotonic()
    try:
        if n % 2:
            request = encode_request(RequestKind.SESSION_RENEWAL, params["token"])
            conn.open_stream().write(request[: len(request) // 2])
        try:
            lost = await asyncio.wait_for(conn.wait_closed(), ACCEPT_TIMEOUT + 20)
        except TimeoutError:
            return "still open", time.monotonic() - started
        who = "gateway" if lost.by_peer else "local"
        return f"{who} code {lost.code}", time.monotonic() - started
    finally:
        await manager.__aexit__(None, None, None)


async def load(params: dict[str, Any]) -> dict[str, Any]:
    """Open the bogus connections (in the worker process); how each one ended."""
    gate = asyncio.Semaphore(params["concurrency"])
    outcomes = await asyncio.gather(*(_one(params, n, gate) for n in range(params["count"])))
    closes = [seconds for what, seconds in outcomes if what.startswith("gateway code")]
    return {
        "outcomes": dict(Counter(what for what, _ in outcomes)),
        "closed_after_s_max": round(max(closes), 2) if closes else None,
        "closed_after_s_min": round(min(closes), 2) if closes else None,
    }


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "bogus", "scale": scale, "params": p}
    verdict = Verdict()
    with timed(out):
        async with Router.running() as router:
            with gateway(work, router) as gw:
                sampler = Sampler(gw.proc.pid)
                async with Probe.running_on(gw, router) as probe:
                    await asyncio.sleep(0.5)
                    out["before"] = sampler.snapshot()
                    params = {
                        **p,
                        "target": list(gw.listen),
                        "fingerprint": gw.fingerprint,
                        "token": gw.token(),
                    }
                    rounds = []
                    for _ in range(p["rounds"]):
                        bogus = asyncio.ensure_future(run_load("bogus", params, 120))
                        watching = asyncio.ensure_future(sampler.watch())
                        setups = asyncio.ensure_future(setups_during(gw, bogus))
                        record = {"probe": await probe.measure(bogus), "load": await bogus}
                        record["setups_during"] = await setups
                        watching.cancel()
                        record["peak"] = {"rss_kib": sampler.peak_rss_kib, "fds": sampler.peak_fds}
                        cpu_after = await sampler.cpu_pct(p["after"])
                        record["after"] = {**sampler.snapshot(), "cpu_pct": cpu_after}
                        rounds.append(record)
                    out["rounds"] = rounds
                    out["after"] = rounds[-1]["after"]
                for record in rounds:
                    judge_probe(verdict, record["probe"], p["max_loss_pct"])
                    load = record["load"]
                    outcomes = load.get("outcomes", {})
                    verdict.check(
                        "all_closed_code_2",
                        outcomes == {"gateway code 2": p["count"]},
                        outcomes or load,
                    )
                    slowest = load.get("closed_after_s_max") or 0
                    verdict.check(
                        "closed_in_time",
                        slowest <= ACCEPT_TIMEOUT + CLOSE_SLACK,
                        f"slowest close after {slowest} s",
                    )
                    setups = record["setups_during"]
                    verdict.check("setups_during", setups["failed"] == 0, setups)
                grown = out["after"]["fds"] - out["before"]["fds"]
                verdict.check("fds_back", grown <= 2, f"{grown} more fds after")
                rss_after = [r["after"]["rss_kib"] for r in rounds]
                rss = rss_after[0] - out["before"]["rss_kib"]
                verdict.check("rss_bounded", rss < 40 * 1024, f"RSS +{rss} KiB after")
                more = rss_after[-1] - rss_after[0]  # a leak grows with every round; reuse does not
                verdict.check("rss_flat_over_rounds", more < 5 * 1024, f"RSS +{more} KiB")
                result = finish(out, verdict, gw, work)
                timeouts = sum(
                    v for k, v in result.get("metrics", {}).items() if "AcceptTimeout" in k
                )
                result["setup_timeouts_counted"] = timeouts
                verdict.check(
                    "timeouts_counted", timeouts == p["count"] * p["rounds"], f"{timeouts} counted"
                )
                return verdict.into(result)
