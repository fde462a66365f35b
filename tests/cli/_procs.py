"""Subprocess helpers for the command-line tests: start a listener, read its address, kill it."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SNAPTUN_REF = REPO.parent / "shared" / "bin" / "snaptun-ref"
TESTDATA = REPO.parent / "shared" / "testdata"
SNAPTUN = [sys.executable, "-m", "snaptun.cli.main"]

START_TIMEOUT = 15.0
RUN_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise TimeoutError(f"no output within {timeout} s")
        return proc.stdout.readline()
    finally:
        selector.close()


@contextlib.contextmanager
def listener(argv: Sequence[str], log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a server that prints ``listening ADDR``; yield (process, ADDR); always kill it."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=err, text=True, env=_env()
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            line = _read_line(proc, max(deadline - time.monotonic(), 0.01))
            if not line:
                raise RuntimeError(f"{argv[0]} exited: {log.read_text()[-2000:]}")
            if line.startswith("listening "):
                break
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def run_json(argv: Sequence[str], timeout: float = RUN_TIMEOUT) -> tuple[int, list[dict[str, Any]]]:
    """Run a client to completion; its exit code and the JSON lines it printed."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON output; stderr: {done.stderr[-2000:]}"
    return done.returncode, lines
