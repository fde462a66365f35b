"""Capacity run: idle tunnels on one gateway, in steps; RSS per tunnel and idle CPU.

``python bench/capacity.py [--quick] [--steps 1000,5000,10000,20000] [--no-ref]``
(also called by ``bench/run.py`` through :func:`run` and :func:`rows`).

A ``snaptun serve`` (temporary state directory, loopback) is started with a
pool, ``max_tunnels`` and admission limits large enough for the largest step
(:func:`gateway_settings`; printed). Idle tunnels are opened from several
``bench/holder.py`` processes (library clients, a few thousand tunnels each)
up to each step; at each step, after the setups have settled, the run records
the gateway's RSS (``/proc/PID/status`` VmRSS), the RSS per tunnel above the
baseline (no tunnels) and since the previous step, the gateway's CPU over an
idle window (only keep-alives cross the tunnels; 100 % = one core), and the
tunnels actually live (the gateway's ``snaptun_gateway_active_tunnels``, and
the holders' own count). With ``snaptun-ref`` available the same curve is
taken against ``snaptun-ref server`` (the Rust echo) for comparison.

Bounded in count (steps <= 50,000 tunnels, <= 8 holders) and time (every wait
has a deadline); every process started here is killed at the end. Nothing
asserts a speed or a memory figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF = REPO.parent / "shared" / "bin" / "snaptun-ref"
TESTDATA = REPO.parent / "shared" / "testdata"
HOLDER = Path(__file__).resolve().parent / "holder.py"

if str(REPO) not in sys.path:  # run as a script: make ``bench.*`` importable
    sys.path.insert(0, str(REPO))

from bench.procs import cpu_seconds  # noqa: E402

START_TIMEOUT = 20.0
FULL_STEPS = (1000, 5000, 10000, 20000)
QUICK_STEPS = (1000,)
MAX_STEP = 50_000
PER_HOLDER = 5000
"""Tunnels per holder process (a socket each; RLIMIT_NOFILE is raised to its hard limit)."""
MAX_HOLDERS = 8
MIN_SETUP_RATE = 20.0
"""Setups per second below which a step is given up (bounds a step's time)."""


@dataclass(frozen=True)
class Plan:
    steps: tuple[int, ...]
    settle: float
    """Seconds after a step's setups before measuring (handshake leftovers fade)."""
    window: float
    """Seconds of the idle CPU window."""
    concurrency: int = 16
    """Setups in flight per holder."""


QUICK = Plan(QUICK_STEPS, settle=2.0, window=5.0)
FULL = Plan(FULL_STEPS, settle=6.0, window=15.0)


def gateway_settings(max_tunnels: int) -> dict[str, Any]:
    """`snaptun serve` settings that let one loopback source set up ``max_tunnels`` tunnels.

    All holders share the source 127.0.0.1, so the per-source bucket must not
    throttle it (completed handshakes refund their token anyway, but up to
    holders x concurrency are in flight at once); Retry is off because it only
    adds a round trip per setup here (no spoofing on loopback); holds are 0 so
    that the pool is never exhausted by ended tunnels.
    """
    return {
        "max_tunnels": max_tunnels + 100,
        "pools": ["10.0.0.0/16", "fd00::/64"],  # 65,533 IPv4 hosts
        "max_half_open": 1024,
        "source_rate": 10000,
        "source_burst": 10000,
        "retry": "never",
        "hold": 0,
        "handshake_timeout": 10,
        "log_level": "warning",
    }


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS), 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """One stdout line of ``proc`` before ``deadline`` (monotonic), '' at EOF."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(max(deadline - time.monotonic(), 0.01)):
            raise TimeoutError("no answer in time")
    return proc.stdout.readline()


def _stop(proc: subprocess.Popen[str]) -> None:
    """Terminate, then kill; always reap."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@dataclass
class Target:
    """A server under test and how holders reach and authenticate to it."""

    name: str
    proc: subprocess.Popen[str]
    address: str
    fingerprint: str
    holder_auth: list[str]
    metrics: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def live_tunnels(self) -> int | None:
        """The gateway's own count of tunnels set up (None without /metrics)."""
        if self.metrics is None:
            return None
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as rsp:
                text = rsp.read().decode()
        except OSError:
            return None
        match = re.search(r"^snaptun_gateway_active_tunnels (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else None


SERVE = (sys.executable, "-m", "snaptun.cli.main", "serve")
"""How the gateway is started; ``bench/memory.py`` swaps in ``bench/memserve.py``."""


def _serve_argv(state: Path, settings: dict[str, Any], launcher: Sequence[str]) -> list[str]:
    argv = [
        *launcher,
        f"--state-dir={state}",
        "--listen=127.0.0.1:0",
        "--metrics=127.0.0.1:0",
        "--underlay-bind=127.0.0.1:0",
        "--underlay-next-hop=127.0.0.1:9",  # nothing is forwarded: the tunnels stay idle
    ]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key == "pools":
            argv += [f"--pool={pool}" for pool in value]
        else:
            argv.append(f"{flag}={value}")
    return argv


@contextlib.contextmanager
def start_gateway(
    work: Path,
    max_tunnels: int,
    launcher: Sequence[str] = SERVE,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Target]:
    """`snaptun serve` with :func:`gateway_settings`; always killed afterwards."""
    settings = gateway_settings(max_tunnels)
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    log = work / "gateway.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            _serve_argv(state, settings, launcher),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**_env(), **(extra_env or {})},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while not line.startswith("listening "):
            line = _read_line(proc, deadline)
            if not line:
                raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        text = log.read_text()
        metrics = re.search(r"metrics http://(\S+)/metrics", text)
        fingerprint = re.search(r"sha256 fingerprint ([0-9a-f]{64})", text)
        if metrics is None or fingerprint is None:
            raise RuntimeError(f"gateway start-up lines not found: {text[-2000:]}")
        yield Target(
            "ours",
            proc,
            line.split()[1],
            fingerprint.group(1),
            [f"--signing-key={state / 'signing-key.pem'}"],
            metrics.group(1),
            settings,
        )
    finally:
        _stop(proc)


@contextlib.contextmanager
def start_reference(ref: Path, work: Path) -> Iterator[Target]:
    """`snaptun-ref server` (the Rust echo) with the test certificate; always killed."""
    from snaptun.aio.quic import fingerprint_of  # noqa: PLC0415 - keeps this module light

    cert, key = TESTDATA / "localhost-cert.pem", TESTDATA / "localhost-key.pem"
    argv = [
        str(ref),
        "server",
        "--listen=127.0.0.1:0",
        f"--cert={cert}",
        f"--key={key}",
        "--token-validity=7200",
        "--max-lifetime=1800",
    ]
    with (work / "ref.log").open("w") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while not line.startswith("listening "):
            line = _read_line(proc, deadline)
            if not line:
                raise RuntimeError("snaptun-ref server exited early")
        yield Target(
            "ref",
            proc,
            line.split()[1],
            fingerprint_of(cert.read_bytes()),
            ["--token=ANAPAYA"],
        )
    finally:
        _stop(proc)


class Holders:
    """Holder processes (``bench/holder.py``) spread over the tunnels of the run."""

    def __init__(self, target: Target, count: int, concurrency: int, work: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        argv = [
            sys.executable,
            str(HOLDER),
            f"--connect={target.address}",
            f"--fingerprint={target.fingerprint}",
            f"--concurrency={concurrency}",
            f"--max-tunnels={PER_HOLDER + 1000}",
            *target.holder_auth,
        ]
        try:
            for n in range(count):
                with (work / f"holder-{target.name}-{n}.log").open("w") as err:
                    self.procs.append(
                        subprocess.Popen(
                            argv,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=err,
                            text=True,
                            env=_env(),
                        )
                    )
            deadline = time.monotonic() + START_TIMEOUT
            for proc in self.procs:
                self._answer(proc, deadline)
        except BaseException:
            self.close()
            raise

    def _answer(self, proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
        line = _read_line(proc, deadline)
        if not line:
            raise RuntimeError("a holder exited")
        record: dict[str, Any] = json.loads(line)
        return record

    def ask(self, commands: Sequence[str], timeout: float) -> list[dict[str, Any]]:
        """Send one command to each holder (in parallel); their answers, in order."""
        for proc, command in zip(self.procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout
        return [self._answer(proc, deadline) for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                if proc.stdin is not None:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
        deadline = time.monotonic() + 30
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.1))
            _stop(proc)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def curve(target: Target, plan: Plan, work: Path) -> dict[str, Any]:
    """Open idle tunnels to ``target`` in ``plan.steps``; measure each step."""
    pid = target.proc.pid
    holders_n = max(2, min(MAX_HOLDERS, math.ceil(plan.steps[-1] / PER_HOLDER)))
    out: dict[str, Any] = {"server": target.name, "holders": holders_n, "steps": []}
    time.sleep(1.0)
    baseline = rss_kib(pid)
    out["baseline_rss_kib"] = baseline
    before = cpu_seconds(pid)
    time.sleep(plan.window / 3)
    out["baseline_cpu_pct"] = round(100 * (cpu_seconds(pid) - before) / (plan.window / 3), 2)
    holders = Holders(target, holders_n, plan.concurrency, work)
    try:
        have = 0
        previous_rss, previous_n = baseline, 0
        for step in plan.steps:
            more = step - have
            started = time.monotonic()
            budget = 60 + more / MIN_SETUP_RATE
            try:
                answers = holders.ask([f"open {k}" for k in _split(more, holders_n)], budget)
            except TimeoutError:  # setups slower than MIN_SETUP_RATE: measure what is up, stop
                answers = []
                out["stopped_early"] = f"step {step}: setups not done within {budget:.0f} s"
            setup_s = time.monotonic() - started
            have = step
            time.sleep(plan.settle)
            rss = rss_kib(pid)
            before = cpu_seconds(pid)
            time.sleep(plan.window)
            cpu_pct = 100 * (cpu_seconds(pid) - before) / plan.window
            counts = holders.ask(["count"] * holders_n, timeout=30) if answers else []
            live_gateway = target.live_tunnels()
            live = live_gateway if live_gateway is not None else sum(c["live"] for c in counts)
            errors: dict[str, int] = {}
            for record in counts:
                for name, n in record.get("errors", {}).items():
                    errors[name] = errors.get(name, 0) + n
            record = {
                "tunnels": step,
                "live": live,
                "live_holders": sum(c["live"] for c in counts),
                "failed_setups": sum(c["failed"] for c in counts),
                "errors": errors,
                "setup_s": round(setup_s, 1),
                "setups_per_s": round(more / setup_s, 1) if answers and setup_s > 0 else None,
                "rss_kib": rss,
                "rss_per_tunnel_kib": round((rss - baseline) / live, 2) if live else None,
                "rss_marginal_kib": (
                    round((rss - previous_rss) / (live - previous_n), 2)
                    if live > previous_n
                    else None
                ),
                "idle_cpu_pct": round(cpu_pct, 2),
                "window_s": plan.window,
            }
            out["steps"].append(record)
            print(f"  {target.name} {json.dumps(record)}", file=sys.stderr, flush=True)
            previous_rss, previous_n = rss, live
            if "stopped_early" in out:
                break
            if not all(a.get("event") == "opened" for a in answers) or live < step // 2:
                out["stopped_early"] = f"step {step}: only {live} tunnels live"
                break
    finally:
        holders.close()
    return out


def run(ref: Path, work: Path, quick: bool, steps: Sequence[int] | None = None) -> dict[str, Any]:
    """The capacity curve of ``snaptun serve`` (and of ``snaptun-ref server`` if ``ref`` exists).

    Returns ``{"ok", "plan", "gateway_settings", "ours": curve, "ref": curve | None}``.
    """
    plan = QUICK if quick else FULL
    if steps is not None:
        chosen = tuple(sorted({int(s) for s in steps}))
        if not chosen or chosen[0] < 1 or chosen[-1] > MAX_STEP:
            raise ValueError(f"steps must lie in 1..{MAX_STEP}")
        plan = Plan(chosen, plan.settle, plan.window, plan.concurrency)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result: dict[str, Any] = {
        "plan": {"steps": list(plan.steps), "settle_s": plan.settle, "window_s": plan.window},
        "gateway_settings": gateway_settings(plan.steps[-1]),
        "ours": None,
        "ref": None,
    }
    print("capacity: snaptun serve with " + json.dumps(result["gateway_settings"]), file=sys.stderr)
    try:
        with start_gateway(work / "ours", plan.steps[-1]) as gateway:
            result["ours"] = curve(gateway, plan, work)
        if ref.exists():
            with start_reference(ref, work) as reference:
                result["ref"] = curve(reference, plan, work)
    except Exception as exc:  # reported, not raised: bench/run.py prints what it has
        result["error"] = f"{type(exc).__name__}: {exc}"
    ours = result["ours"]
    result["ok"] = (
        "error" not in result
        and ours is not None
        and len(ours["steps"]) == len(plan.steps)
        and "stopped_early" not in ours
    )
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _step(curve_result: dict[str, Any] | None, tunnels: int) -> dict[str, Any] | None:
    if not curve_result:
        return None
    for record in curve_result["steps"]:
        if record["tunnels"] == tunnels:
            found: dict[str, Any] = record
            return found
    return None


def _value(record: dict[str, Any] | None, key: str, scale: float = 1.0) -> float | None:
    if record is None or record.get(key) is None:
        return None
    return float(record[key]) * scale


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}"


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows in ``bench/run.py``'s ``build_table`` format, one group per step."""
    out: list[dict[str, Any]] = []
    for tunnels in results.get("plan", {}).get("steps", []):
        ours = _step(results.get("ours"), tunnels)
        ref = _step(results.get("ref"), tunnels)
        for label, key, scale, digits in (
            ("tunnels live", "live", 1.0, 0),
            ("server RSS (MiB)", "rss_kib", 1 / 1024, 1),
            ("RSS per tunnel (KiB)", "rss_per_tunnel_kib", 1.0, 1),
            ("idle CPU %", "idle_cpu_pct", 1.0, 1),
        ):
            a, b = _value(ours, key, scale), _value(ref, key, scale)
            out.append(
                {
                    "metric": f"{tunnels:,} idle tunnels, {label}",
                    "ours": a,
                    "ref": b,
                    "udp": None,
                    "ours_over_ref": "-" if key == "live" else _ratio(a, b),
                    "ours_over_udp": "-",
                    "digits": digits,
                }
            )
    return out


def _render(table: list[dict[str, Any]]) -> str:
    lines = ["| metric | ours | snaptun-ref | ours/ref |", "| --- | ---: | ---: | ---: |"]
    for row in table:
        cells = ["-" if row[k] is None else f"{row[k]:,.{row['digits']}f}" for k in ("ours", "ref")]
        lines.append(f"| {row['metric']} | {cells[0]} | {cells[1]} | {row['ours_over_ref']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tunnels only (< 30 s)")
    parser.add_argument("--steps", help="comma-separated tunnel counts, e.g. 1000,5000")
    parser.add_argument("--ref", type=Path, default=DEFAULT_REF, help="snaptun-ref binary")
    parser.add_argument("--no-ref", action="store_true", help="skip the snaptun-ref curve")
    parser.add_argument("--out", type=Path, help="JSON result file")
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    ref = Path("/nonexistent") if args.no_ref else args.ref
    with tempfile.TemporaryDirectory(prefix="snaptun-capacity-") as tmp:
        result = run(ref, Path(tmp), args.quick, steps)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    print("\n" + _render(rows(result)), file=sys.stderr)
    return 0 if result["ok"] else 1


def _exit_on_sigterm() -> None:
    """SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C, so every child process is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


if __name__ == "__main__":
    sys.exit(main())
