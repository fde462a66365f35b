"""Processes of the loopback benchmarks: servers that print ``listening ADDR``, bench clients.

Shared by ``bench/run.py`` and ``bench/gateway.py``. Every wait has a deadline
and every server started here is killed when its ``with`` block ends, also on
an error. Nothing here judges a speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    """How long each load runs; one plan for every server of a run, so ratios compare alike."""

    duration: float
    warmup: float
    setups: int
    window: int = 64

    @property
    def bench_timeout(self) -> float:
        return self.duration + self.warmup + 30


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    address: str

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc)."""
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (Linux /proc); NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def start_server(
    name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start a server that prints ``listening ADDR``; always kill it afterwards."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=None if env is None else dict(env),
        )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + START_TIMEOUT
            line = ""
            while not line.startswith("listening "):
                if not selector.select(max(deadline - time.monotonic(), 0.01)):
                    raise RuntimeError(f"{name}: no 'listening' line within {START_TIMEOUT} s")
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{name} exited early: {log.read_text()[-2000:]}")
        yield Server(name, proc, line.split()[1])
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def run_json(argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a bench client and return its last JSON line (or a failure record)."""
    shown = [a.split("=", 1)[0] + "=…" if a.startswith("--token=") else a for a in argv[1:]]
    print("  $", " ".join(shown), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"ok": False, "error": f"no output (exit {done.returncode}): {done.stderr[-500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _cpu_pct(server: Server, before: float, wall: float) -> float:
    return round(100 * (server.cpu_seconds() - before) / wall, 1)


def echo_bench(
    ref: Path,
    server: Server,
    size: int,
    plan: Plan,
    ca: Path,
    *,
    extra: Sequence[str] = (),
    also: Sequence[Server] = (),
) -> dict[str, Any]:
    """``snaptun-ref bench`` against ``server``; its CPU % (and that of ``also``) over the run."""
    cpu_before = server.cpu_seconds()
    also_before = [s.cpu_seconds() for s in also]
    result = run_json(
        [
            str(ref),
            "bench",
            f"--connect={server.address}",
            f"--ca={ca}",
            f"--size={size}",
            f"--duration={plan.duration}",
            f"--warmup={plan.warmup}",
            f"--window={plan.window}",
            *extra,
        ],
        plan.bench_timeout,
    )
    wall = plan.duration + plan.warmup
    result["server_cpu_pct"] = _cpu_pct(server, cpu_before, wall)
    for other, before in zip(also, also_before, strict=True):
        result[f"{other.name}_cpu_pct"] = _cpu_pct(other, before, wall)
    return result


def udp_bench(ref: Path, server: Server, size: int, plan: Plan) -> dict[str, Any]:
    """``snaptun-ref udp-bench`` against ``udp-echo``: the loopback ceiling, with its CPU %."""
    cpu_before = server.cpu_seconds()
    result = run_json(
        [
            str(ref),
            "udp-bench",
            f"--connect={server.address}",
            f"--size={size}",
            f"--duration={plan.duration}",
            f"--warmup={plan.warmup}",
            f"--window={plan.window}",
        ],
        plan.bench_timeout,
    )
    result["server_cpu_pct"] = _cpu_pct(server, cpu_before, plan.duration + plan.warmup)
    return result


def setup_bench(
    ref: Path,
    server: Server,
    plan: Plan,
    ca: Path,
    *,
    resumption: bool,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """``snaptun-ref setup-bench``: sequential connect + renew + assign + close."""
    argv = [
        str(ref),
        "setup-bench",
        f"--connect={server.address}",
        f"--ca={ca}",
        f"--count={plan.setups}",
        "--max-seconds=60",
        *extra,
    ]
    if not resumption:
        argv.append("--no-resumption")
    return run_json(argv, 90)
