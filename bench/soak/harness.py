"""What every soak scenario shares: the gateway process, /proc sampling, a probe tunnel, checks.

* :func:`gateway` starts ``snaptun serve`` on a state directory (embedded
  defaults plus a scenario's flags) and always kills it; :func:`kill9` ends it
  with SIGKILL so that a restart on the same directory can be checked.
* :class:`Sampler` reads the gateway's RSS, CPU time and open fds from /proc,
  and keeps the peak while a load runs.
* :class:`Probe` is a legitimate tunnel sending a numbered packet every 5 ms to
  a foreign host; the :class:`Router` (the border router) echoes each one back,
  so the probe measures loss and round-trip times through the gateway.
* :func:`run_load` runs a scenario's load in a process of its own
  (``bench/soak/worker.py``), so that it shares neither this event loop nor its
  socket buffers with the probe.
* :class:`Verdict` collects named checks; the scenario passes when all hold.

Loopback only; every wait has a deadline; every process started here is
killed when its ``with`` block ends, also on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.procs import cpu_seconds  # noqa: E402
from tests.gateway._gateway import GatewayProcess, run_gateway, scion_udp, scrape  # noqa: E402

from snaptun.aio import quic  # noqa: E402
from snaptun.aio.client import ClientBuilder  # noqa: E402
from snaptun.core.addressing import EndhostAddress  # noqa: E402

FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")
PROBE_INTERVAL = 0.005
"""Seconds between two probe packets."""

__all__ = [
    "FOREIGN",
    "GatewayProcess",
    "Probe",
    "Router",
    "Sampler",
    "Verdict",
    "gateway",
    "kill9",
    "metrics",
    "open_fds",
    "rss_kib",
    "run_load",
    "setup_once",
]


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS); 0 once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    """File descriptors ``pid`` holds open; -1 once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


@dataclass
class Sampler:
    """RSS, CPU and fds of one process: snapshots, and the peak while :meth:`watch` runs."""

    pid: int
    peak_rss_kib: int = 0
    peak_fds: int = 0

    def snapshot(self) -> dict[str, float]:
        rss, fds = rss_kib(self.pid), open_fds(self.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_fds = max(self.peak_fds, fds)
        return {"rss_kib": rss, "fds": fds, "cpu_s": round(cpu_seconds(self.pid), 2)}

    async def cpu_pct(self, seconds: float) -> float:
        """The process's CPU over the next ``seconds`` (100 = one core)."""
        before = cpu_seconds(self.pid)
        await asyncio.sleep(seconds)
        return round(100 * (cpu_seconds(self.pid) - before) / seconds, 1)

    async def watch(self, interval: float = 0.1) -> None:
        """Keep the peaks until cancelled."""
        while True:
            self.snapshot()
            await asyncio.sleep(interval)


@contextlib.contextmanager
def gateway(work: Path, router: Router | None, *extra: str, listen: str = "127.0.0.1:0"):  # type: ignore[no-untyped-def]
    """``snaptun serve`` on ``work/state`` (log ``work/gateway-N.log``); always killed."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(list(work.glob("gateway-*.log")))
    sink = router.address if router is not None else ("127.0.0.1", 9)
    with run_gateway(work / "state", work / f"gateway-{n}.log", sink, *extra, listen=listen) as gw:
        if router is not None:
            router.gateway = gw.underlay
        yield gw


def kill9(gw: GatewayProcess) -> None:
    """SIGKILL: no shutdown, no flush; what a crash or an OOM kill leaves behind."""
    gw.proc.kill()
    gw.proc.wait(10)


def metrics(
    gw: GatewayProcess, prefixes: Sequence[str] = ("snaptun_gateway_",)
) -> dict[str, float]:
    """The gateway's counters whose names start with one of ``prefixes`` (non-zero only)."""
    return {
        name: value
        for name, value in scrape(gw.metrics).items()
        if name.startswith(tuple(prefixes)) and value
    }


class Router(asyncio.DatagramProtocol):
    """The border router: answers each packet from the gateway with its last 8 bytes, reversed."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.gateway: tuple[str, int] | None = None
        self.client: EndhostAddress | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[Router]:
        loop = asyncio.get_running_loop()
        router = cls()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: router, local_addr=("127.0.0.1", 0)
        )
        router.address = transport.get_extra_info("sockname")[:2]
        try:
            yield router
        finally:
            transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and self.gateway is not None and self.client is not None:
            self.transport.sendto(scion_udp(FOREIGN, self.client, data[-8:]), self.gateway)


class Probe:
    """A legitimate tunnel through the gateway; a packet every 5 ms, echoed by the router."""

    def __init__(self, sender: Any, me: EndhostAddress) -> None:
        self._sender = sender
        self._me = me
        self._sent_at: dict[int, float] = {}
        self._rtts: list[float] = []
        self.received = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def running_on(cls, gw: GatewayProcess, router: Router) -> AsyncIterator[Probe]:
        """Set the tunnel up; while the block runs, :meth:`measure` counts what comes back."""
        async with quic.connect(*gw.listen, fingerprint=gw.fingerprint) as conn:
            sender, receiver, control = await ClientBuilder(gw.token(ttl=3600)).connect(conn)
            router.client = control.assigned_addresses[0]
            probe = cls(sender, router.client)
            reader = asyncio.ensure_future(probe._read(receiver))
            try:
                yield probe
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader

    async def _read(self, receiver: Any) -> None:
        while True:
            packet = await receiver.receive()
            at = self._sent_at.pop(int(packet[-8:]), None)
            if at is not None:
                self.received += 1
                self._rtts.append(time.monotonic() - at)

    async def measure(self, until: asyncio.Future[Any] | float) -> dict[str, Any]:
        """Send until ``until`` is done (a future) or for that many seconds; loss and RTTs."""
        self._sent_at.clear()
        self._rtts = []
        self.received = sent = 0
        loop = asyncio.get_running_loop()
        stop = loop.time() + until if isinstance(until, float | int) else None

        def going() -> bool:
            if isinstance(until, asyncio.Future):
                return not until.done()
            return stop is not None and loop.time() < stop

        while going():
            self._sent_at[sent] = time.monotonic()
            self._sender.send(scion_udp(self._me, FOREIGN, b"%08d" % sent))
            sent += 1
            await asyncio.sleep(PROBE_INTERVAL)
        await asyncio.sleep(0.5)  # the last answers
        received, rtts = self.received, sorted(self._rtts)
        self._sent_at.clear()  # later answers are not counted
        return {
            "sent": sent,
            "received": received,
            "loss_pct": round(100 * (sent - received) / max(sent, 1), 2),
            "rtt_p50_ms": round(1000 * rtts[len(rtts) // 2], 2) if rtts else None,
            "rtt_p99_ms": (
                round(1000 * rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)], 2) if rtts else None
            ),
        }


async def setup_once(gw: GatewayProcess, identity: uuid.UUID | None = None) -> str | None:
    """A fresh setup; None when it worked, else why not (for "setups that failed")."""
    try:
        async with quic.connect(*gw.listen, fingerprint=gw.fingerprint, timeout=5) as conn:
            async with asyncio.timeout(10):
                await ClientBuilder(gw.token(identity)).connect(conn)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def run_load(module: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``bench.soak.<module>.load(params)`` in a process of its own; its JSON answer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.soak.worker",
        module,
        json.dumps(params),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        return {"error": f"load {module} did not end within {timeout} s"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"load {module} exited {proc.returncode}: {err.decode()[-1500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@dataclass
class Verdict:
    """Named checks of one scenario; ``pass`` when every one holds."""

    failed: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: object = "") -> None:
        self.checked.append(name)
        if not ok:
            self.failed.append(f"{name}: {detail}" if detail != "" else name)

    def into(self, out: dict[str, Any]) -> dict[str, Any]:
        out["verdict"] = "fail" if self.failed else "pass"
        out["reasons"] = self.failed
        out["checks"] = self.checked
        return out


@contextlib.contextmanager
def timed(out: dict[str, Any]) -> Iterator[None]:
    """Record the scenario's wall time in ``out["elapsed_s"]``."""
    started = time.monotonic()
    try:
        yield
    finally:
        out["elapsed_s"] = round(time.monotonic() - started, 1)


async def setups_during(
    gw: GatewayProcess, until: asyncio.Future[Any], every: float = 1.0
) -> dict[str, Any]:
    """A fresh legitimate setup every ``every`` seconds until ``until`` is done."""
    tried, failed = 0, []
    while not until.done():
        await asyncio.wait({until}, timeout=every)
        if until.done():
            break
        tried += 1
        why = await setup_once(gw)
        if why is not None:
            failed.append(why)
    return {"tried": tried, "failed": len(failed), "errors": failed[:5]}


def judge_probe(verdict: Verdict, probe: dict[str, Any], max_loss_pct: float) -> None:
    """The legitimate tunnel kept working through the load."""
    verdict.check("probe_received", probe["received"] > 0, probe)
    verdict.check(
        "probe_loss", probe["loss_pct"] <= max_loss_pct, f"{probe['loss_pct']}% > {max_loss_pct}%"
    )


def finish(
    out: dict[str, Any],
    verdict: Verdict,
    gw: GatewayProcess,
    work: Path,
    *,
    expected: dict[str, str] | None = None,
    running: bool = True,
) -> dict[str, Any]:
    """The checks every scenario ends with: store, events, counters, gateway alive."""
    from bench.soak.invariants import check_events, check_store, read_events  # noqa: PLC0415

    if running:
        verdict.check("gateway_alive", gw.proc.poll() is None, f"exit {gw.proc.returncode}")
        with contextlib.suppress(OSError):
            out["metrics"] = metrics(gw)
    store, store_violations = check_store(gw.state.root / "grants.sqlite3", expected)
    text = "\n".join(p.read_text() for p in sorted(work.glob("gateway-*.log")))
    events, event_violations = check_events(read_events(text))
    out["store"] = store
    out["events"] = events
    out["invariant_violations"] = store_violations + event_violations
    verdict.check("integrity_check", store["integrity_check"] == "ok", store["integrity_check"])
    verdict.check("invariants", not out["invariant_violations"], out["invariant_violations"][:5])
    tracebacks = text.count("Traceback")
    out["tracebacks_in_log"] = tracebacks
    verdict.check("no_tracebacks", tracebacks == 0, f"{tracebacks} in the gateway log")
    return verdict.into(out)
