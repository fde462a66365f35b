"""Scenario ``slow``: control streams that trickle bytes and never finish, on short tokens.

``count`` connections from one process: half trickle a ``renew_session``
request during the setup, one byte every 0.3 s, never finishing it (the
gateway must close them at its setup timeout, 3 s, with code 2); the other
half set a tunnel up with a token valid ``ttl`` seconds, then open ``streams``
control streams each trickling a request the same way (the gateway must reset
each stream at its request timeout, 3 s, and close the tunnel with code 4
when the token expires, not later). Pass: every connection closed by the
gateway with the expected code, expiry closes within 3 s of the token's
``exp``, every trickled post-setup stream reset, the probe within its loss
bound, fds back and RSS within 20 MiB afterwards, the invariants hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
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
    timed,
)

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.aio.quic import QuicConnection, QuicStream
from snaptun.constants import ACCEPT_TIMEOUT
from snaptun.core.control import RequestKind, encode_request
from snaptun.core.tokens import SnapTokenClaims, mint_token
from snaptun.keyfiles import load_private_key

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"count": 20, "ttl": 5, "streams": 2, "after": 1.0, "max_loss_pct": 5.0},
    "full": {"count": 200, "ttl": 12, "streams": 3, "after": 3.0, "max_loss_pct": 1.0},
}
TRICKLE = 0.3
"""Seconds between two trickled bytes."""
LATE = 3.0
"""Seconds past its deadline by which the gateway must have closed a connection."""


async def _trickle(stream: QuicStream, data: bytes) -> None:
    """One byte every TRICKLE seconds, never the end of the stream; stops when refused."""
    with contextlib.suppress(Exception):
        for byte in data[:-1]:
            stream.write(bytes([byte]))
            await asyncio.sleep(TRICKLE)
        await asyncio.sleep(3600)


async def _reset_seen(stream: QuicStream) -> bool:
    """Whether the gateway reset the stream (rather than the connection ending)."""
    try:
        while await stream.read():
            pass
    except Exception as exc:
        return type(exc).__name__ == "QuicStreamReset"
    return False


async def _closed(conn: QuicConnection) -> str:
    lost = await asyncio.wait_for(conn.wait_closed(), 60)
    return f"{'gateway' if lost.by_peer else 'local'} code {lost.code}"


async def _one(params: dict[str, Any], n: int, gate: asyncio.Semaphore) -> dict[str, Any]:
    host, port = params["target"]
    key = load_private_key(Path(params["signing_key"]))
    exp = int(time.time()) + params["ttl"]
    token = mint_token(key, SnapTokenClaims(pssid=uuid.uuid4(), exp=exp))
    request = encode_request(RequestKind.SESSION_RENEWAL, token)
    async with gate:
        manager = quic.connect(host, port, fingerprint=params["fingerprint"], timeout=10)
        try:
            conn = await manager.__aenter__()
        except Exception as exc:
            return {"kind": "?", "outcome": f"handshake failed: {type(exc).__name__}"}
    tasks: list[asyncio.Task[Any]] = []
    try:
        if n % 2 == 0:  # trickle the setup itself
            started = time.monotonic()
            tasks.append(asyncio.ensure_future(_trickle(conn.open_stream(), request)))
            outcome = await _closed(conn)
            late = time.monotonic() - started - ACCEPT_TIMEOUT
            return {"kind": "setup", "outcome": outcome, "late_s": late}
        try:
            async with asyncio.timeout(10):
                await ClientBuilder(token).connect(conn)
        except Exception as exc:
            return {"kind": "expiry", "outcome": f"setup failed: {type(exc).__name__}: {exc}"}
        streams = []
        for _ in range(params["streams"]):
            # The first byte at once: QuicConnection.open_stream() hands out the same id
            # again until the stream has been written to (see docs/RELIABILITY.md).
            streams.append(conn.open_stream())
            streams[-1].write(request[:1])
        tasks += [asyncio.ensure_future(_trickle(s, request[1:])) for s in streams]
        resets = [asyncio.ensure_future(_reset_seen(s)) for s in streams]
        outcome = await _closed(conn)
        late = time.time() - exp
        seen = [r.result() for r in resets if r.done() and not r.cancelled()]
        return {"kind": "expiry", "outcome": outcome, "late_s": late, "resets": sum(seen)}
    except TimeoutError:
        return {"kind": "?", "outcome": "still open after 60 s"}
    finally:
        for task in tasks:
            task.cancel()
        await manager.__aexit__(None, None, None)


async def load(params: dict[str, Any]) -> dict[str, Any]:
    """Open the slow connections (in the worker process); how each one ended."""
    gate = asyncio.Semaphore(20)
    results = await asyncio.gather(*(_one(params, n, gate) for n in range(params["count"])))
    out: dict[str, Any] = {}
    for kind in ("setup", "expiry"):
        mine = [r for r in results if r["kind"] == kind]
        lates = [r["late_s"] for r in mine if "late_s" in r]
        out[kind] = {
            "outcomes": dict(Counter(r["outcome"] for r in mine)),
            "late_s_min": round(min(lates), 2) if lates else None,
            "late_s_max": round(max(lates), 2) if lates else None,
        }
    out["expiry"]["streams_reset"] = sum(r.get("resets", 0) for r in results)
    out["other"] = [r["outcome"] for r in results if r["kind"] == "?"][:5]
    return out


async def run(scale: str, work: Path) -> dict[str, Any]:
    p = SCALES[scale]
    out: dict[str, Any] = {"scenario": "slow", "scale": scale, "params": p}
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
                    slow = asyncio.ensure_future(run_load("slow", params, 120))
                    watching = asyncio.ensure_future(sampler.watch())
                    out["probe"] = await probe.measure(slow)
                    out["load"] = await slow
                    watching.cancel()
                    out["peak"] = {"rss_kib": sampler.peak_rss_kib, "fds": sampler.peak_fds}
                    cpu_after = await sampler.cpu_pct(p["after"])
                    out["after"] = {**sampler.snapshot(), "cpu_pct": cpu_after}
                judge_probe(verdict, out["probe"], p["max_loss_pct"])
                half = p["count"] // 2
                load = out["load"]
                if "error" in load:
                    verdict.check("load_ran", False, load)
                else:
                    setup, expiry = load["setup"], load["expiry"]
                    verdict.check(
                        "setup_trickle_closed_code_2",
                        setup["outcomes"] == {"gateway code 2": p["count"] - half},
                        setup["outcomes"],
                    )
                    verdict.check(
                        "expired_closed_code_4",
                        expiry["outcomes"] == {"gateway code 4": half},
                        expiry["outcomes"],
                    )
                    for kind in (setup, expiry):
                        late = kind["late_s_max"] or 0
                        verdict.check("closed_in_time", late <= LATE, f"{late} s late")
                    early = expiry["late_s_min"] or 0
                    verdict.check("not_closed_early", early >= -1.0, f"{early} s before exp")
                    verdict.check(
                        "streams_reset",
                        expiry["streams_reset"] == half * p["streams"],
                        f"{expiry['streams_reset']} of {half * p['streams']}",
                    )
                grown = out["after"]["fds"] - out["before"]["fds"]
                verdict.check("fds_back", grown <= 2, f"{grown} more fds after")
                rss = out["after"]["rss_kib"] - out["before"]["rss_kib"]
                verdict.check("rss_back", rss < 20 * 1024, f"RSS +{rss} KiB after")
                return finish(out, verdict, gw, work)
