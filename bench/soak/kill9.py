"""Scenario ``kill9``: ``kill -9`` of the gateway at random moments during churn, then restart.

The churn load of :mod:`bench.soak.churn` runs for ``seconds`` against a
gateway on a fixed port; ``kills`` times, after a random pause, the gateway
is killed with SIGKILL (no shutdown, no flush), its ``grants.sqlite3`` is
checked while it is down (``PRAGMA integrity_check``, no address stored for
two identities), and a new gateway is started on the same state directory
and port. Measured per kill: seconds until it listens again and until a
fresh setup works. At the end the store is checked against the addresses the
clients were given (a grant answered before the kill is still that
identity's after it) and the event logs of all the gateway's lives are
replayed for double grants. Pass: every restart listens and serves within
10 s, every store check clean, no invariant violation, no traceback. Setups
that fail while the gateway is down are expected and only counted.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

from bench.soak.churn import failed_setups
from bench.soak.harness import (
    Sampler,
    Verdict,
    finish,
    gateway,
    kill9,
    run_load,
    setup_once,
    timed,
)
from bench.soak.invariants import check_store

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"identities": 8, "concurrency": 4, "abrupt": 0.2, "kills": 2, "gap": [0.3, 1.0]},
    "full": {"identities": 32, "concurrency": 12, "abrupt": 0.2, "kills": 20, "gap": [0.5, 4.0]},
}
BACK_WITHIN = 10.0
"""Seconds in which a restarted gateway must listen and set a tunnel up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _serving(gw: Any) -> float | None:
    """Seconds until a fresh setup works on ``gw`` (None: not within BACK_WITHIN)."""
    started = time.monotonic()
    while time.monotonic() - started < BACK_WITHIN:
        if await setup_once(gw) is None:
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(0.1)
    return None


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "kill9", "scale": scale, "params": p}
    verdict = Verdict()
    rng = random.Random(9)
    listen = f"127.0.0.1:{free_port()}"
    gaps = [rng.uniform(*p["gap"]) for _ in range(p["kills"])]
    seconds = sum(gaps) + p["kills"] + 2  # a restart takes well under a second
    restarts: list[dict[str, Any]] = []
    with timed(out):
        gw_cm = gateway(work, None, listen=listen)
        gw = gw_cm.__enter__()
        try:
            params = {
                **p,
                "cycles": 1_000_000,
                "seconds": seconds,
                "target": list(gw.listen),
                "fingerprint": gw.fingerprint,
                "signing_key": str(gw.state.signing_key),
            }
            churning = asyncio.ensure_future(run_load("churn", params, seconds + 60))
            for gap in gaps:
                await asyncio.sleep(gap)
                kill9(gw)
                gw_cm.__exit__(None, None, None)
                store, violations = check_store(gw.state.root / "grants.sqlite3")
                started = time.monotonic()
                gw_cm = gateway(work, None, listen=listen)
                gw = gw_cm.__enter__()
                listening = round(time.monotonic() - started, 2)
                serving = await _serving(gw)
                restarts.append(
                    {
                        "after_s": round(gap, 2),
                        "store": store,
                        "violations": violations,
                        "listening_s": listening,
                        "serving_s": serving,
                    }
                )
            load = await churning
            out["cpu_pct_after"] = await Sampler(gw.proc.pid).cpu_pct(1.0)
            given = load.pop("given", {})
            out["load"] = load
            out["restarts"] = restarts
            verdict.check("load_ran", "error" not in load, load)
            verdict.check(
                "all_restarts_serve",
                all(r["serving_s"] is not None for r in restarts),
                [r["serving_s"] for r in restarts],
            )
            bad = [v for r in restarts for v in r["violations"]]
            verdict.check("store_clean_after_each_kill", not bad, bad[:5])
            violations = load.get("client_violations", [])
            verdict.check("client_invariants", not violations, violations[:5])
            outcomes = load.get("outcomes", {})
            out["setups_failed_while_down"] = failed_setups(outcomes)
            return finish(out, verdict, gw, work, expected=given)
        finally:
            gw_cm.__exit__(None, None, None)
