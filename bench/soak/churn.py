"""Scenario ``churn``: thousands of setup/teardown cycles over a few dozen identities.

``concurrency`` loops in one process (the worker) each pick one of
``identities`` identities (one token each, one ``pssid`` each), set a tunnel
up, send a packet, hold it a few milliseconds and tear it down: gracefully
(CONNECTION_CLOSE), or, for ``abrupt`` of them, by closing the client's socket
without a word (the gateway keeps that tunnel until a newer one of the same
identity replaces it or the idle timeout ends it). Two loops may pick one
identity at once: the newer tunnel wins, the older is closed with code 0.

The loops check, as the clients see it: an identity is always given the same
address (its hold outlives the run), an address is never given to two
identities, and when a tunnel is set up, any older open tunnel of its
identity is closed by the gateway within 2 s (no address live on two
tunnels). The run checks the gateway's store and event log the same way
(:mod:`bench.soak.invariants`), and that at most one tunnel per identity is
live at the end. Pass: no violation, no failed setup (beyond the ones the
newest-wins rule refuses), the probe within its loss bound, fds back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.soak.harness import (
    FOREIGN,
    Probe,
    Router,
    Sampler,
    Verdict,
    finish,
    gateway,
    judge_probe,
    run_load,
    timed,
)
from tests.gateway._gateway import scion_udp

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.aio.quic import QuicConnection
from snaptun.core.tokens import SnapTokenClaims, mint_token
from snaptun.keyfiles import load_private_key

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"identities": 8, "cycles": 150, "concurrency": 6, "abrupt": 0.2, "seconds": 60},
    "full": {"identities": 32, "cycles": 3000, "concurrency": 12, "abrupt": 0.2, "seconds": 150},
}
MAX_LOSS_PCT = {"smoke": 5.0, "full": 1.0}
REPLACE_WITHIN = 2.0
"""Seconds in which the gateway must close an older tunnel of an identity that set up anew."""


class Churn:
    """The cycles of the load and what the clients observed."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        key = load_private_key(Path(params["signing_key"]))
        exp = int(time.time()) + 3600
        self.ids = [str(uuid.uuid4()) for _ in range(params["identities"])]
        self.tokens = {
            i: mint_token(key, SnapTokenClaims(pssid=uuid.UUID(i), exp=exp)) for i in self.ids
        }
        self.random = random.Random(params.get("seed", 6))
        self.outcomes: Counter[str] = Counter()
        self.given: dict[str, str] = {}  # identity -> address
        self.owner: dict[str, str] = {}  # address -> identity
        self.open: dict[str, set[QuicConnection]] = {i: set() for i in self.ids}
        self.violations: list[str] = []
        self.checks: set[asyncio.Task[None]] = set()
        self.setup_s: list[float] = []
        self.done = 0
        self.started = 0
        self.deadline = time.monotonic() + params["seconds"]

    def _note(self, identity: str, address: str, conn: QuicConnection) -> None:
        if self.given.setdefault(identity, address) != address:
            self.violations.append(f"{identity} given {address}, before {self.given[identity]}")
        if self.owner.setdefault(address, identity) != identity:
            self.violations.append(f"{address} given to {identity} and {self.owner[address]}")
        for older in self.open[identity] - {conn}:
            task = asyncio.ensure_future(self._replaced(identity, address, older))
            self.checks.add(task)
            task.add_done_callback(self.checks.discard)

    async def _replaced(self, identity: str, address: str, older: QuicConnection) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(older.wait_closed()), REPLACE_WITHIN)
        except TimeoutError:
            self.violations.append(
                f"{address} live on two tunnels of {identity} for {REPLACE_WITHIN} s"
            )

    async def cycle(self) -> None:
        identity = self.random.choice(self.ids)
        abrupt = self.random.random() < self.p["abrupt"]
        host, port = self.p["target"]
        started = time.monotonic()
        try:
            async with quic.connect(host, port, fingerprint=self.p["fingerprint"]) as conn:
                try:
                    async with asyncio.timeout(10):
                        sender, _, control = await ClientBuilder(self.tokens[identity]).connect(
                            conn
                        )
                except Exception as exc:
                    lost = conn.closed
                    if lost is not None and lost.by_peer and lost.code == 0:
                        self.outcomes["replaced during setup"] += 1
                    else:
                        self.outcomes[f"setup failed: {type(exc).__name__}"] += 1
                    return
                self.setup_s.append(time.monotonic() - started)
                address = str(control.assigned_addresses[0])
                self.open[identity].add(conn)
                try:
                    self._note(identity, address, conn)
                    me = control.assigned_addresses[0]
                    with contextlib.suppress(Exception):  # replaced already: seen below
                        sender.send(scion_udp(me, FOREIGN, b"%08d" % 0))
                    await asyncio.sleep(self.random.uniform(0, 0.05))
                    lost = conn.closed
                    if lost is not None:
                        self.outcomes[f"closed by gateway: code {lost.code}"] += 1
                    elif abrupt:
                        self.outcomes["abrupt"] += 1
                        transport = getattr(conn, "_transport", None)
                        if transport is not None:
                            transport.abort()  # no CONNECTION_CLOSE: the socket just goes
                    else:
                        self.outcomes["graceful"] += 1
                finally:
                    self.open[identity].discard(conn)
        except Exception as exc:  # a handshake that failed, e.g. the gateway was killed
            self.outcomes[f"connect failed: {type(exc).__name__}"] += 1
        finally:
            self.done += 1

    async def loop(self) -> None:
        while self.started < self.p["cycles"] and time.monotonic() < self.deadline:
            self.started += 1
            await self.cycle()

    def result(self) -> dict[str, Any]:
        setups = sorted(self.setup_s)
        return {
            "cycles": self.done,
            "outcomes": dict(self.outcomes),
            "given": self.given,
            "client_violations": self.violations,
            "setup_ms_p50": round(1000 * setups[len(setups) // 2], 1) if setups else None,
            "setup_ms_p99": round(1000 * setups[len(setups) * 99 // 100], 1) if setups else None,
        }


async def load(params: dict[str, Any]) -> dict[str, Any]:
    """The cycles (in the worker process)."""
    churn = Churn(params)
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(params["seconds"] + 30):
            await asyncio.gather(*(churn.loop() for _ in range(params["concurrency"])))
            if churn.checks:
                await asyncio.wait(set(churn.checks))
    return {**churn.result(), "seconds": round(time.monotonic() - started, 1)}


def failed_setups(outcomes: dict[str, int]) -> int:
    """Setups that failed for another reason than a newer tunnel of the same identity."""
    return sum(n for what, n in outcomes.items() if "failed" in what)


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "churn", "scale": scale, "params": p}
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
                        "signing_key": str(gw.state.signing_key),
                    }
                    churning = asyncio.ensure_future(run_load("churn", params, p["seconds"] + 60))
                    watching = asyncio.ensure_future(sampler.watch())
                    out["probe"] = await probe.measure(churning)
                    load = await churning
                    watching.cancel()
                    out["peak"] = {"rss_kib": sampler.peak_rss_kib, "fds": sampler.peak_fds}
                    cpu_after = await sampler.cpu_pct(1.0)
                    out["after"] = {**sampler.snapshot(), "cpu_pct": cpu_after}
                given = load.pop("given", {})
                out["load"] = load
                judge_probe(verdict, out["probe"], MAX_LOSS_PCT[scale])
                verdict.check("load_ran", "error" not in load, load)
                verdict.check("all_cycles", load.get("cycles") == p["cycles"], load.get("cycles"))
                outcomes = load.get("outcomes", {})
                verdict.check("no_failed_setups", failed_setups(outcomes) == 0, outcomes)
                violations = load.get("client_violations", [])
                verdict.check("client_invariants", not violations, violations[:5])
                grown = out["after"]["fds"] - out["before"]["fds"]
                verdict.check("fds_back", grown <= 2, f"{grown} more fds after")
                result = finish(out, verdict, gw, work, expected=given)
                live = result.get("metrics", {}).get("snaptun_gateway_active_tunnels", 0)
                verdict.check(
                    "one_tunnel_per_identity",
                    live <= p["identities"] + 1,
                    f"{live} tunnels live for {p['identities']} identities and the probe",
                )
                return verdict.into(result)
