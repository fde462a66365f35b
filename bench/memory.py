"""Where an idle tunnel's memory goes in the gateway: N, then 2N idle tunnels, diffed.

``python bench/memory.py [--tunnels 1000] [--trace 12] [--top 40] [--holders 2]``

Starts ``snaptun serve`` through ``bench/memserve.py`` (the capacity run's
settings, :func:`bench.capacity.gateway_settings`), opens ``--tunnels`` idle
tunnels from ``bench/holder.py`` processes, lets them settle and takes a
memory record of the gateway; then opens as many again and takes another.
The difference, divided by the tunnels added, is what one more idle tunnel
costs, without start-up and without one-off growth:

* RSS, and glibc's heap in use (``mallinfo2`` ``uordblks``: qh3's Rust
  connection state and Python's objects larger than 512 bytes);
* with ``--trace N`` (tracemalloc, N frames), Python allocations per tunnel
  grouped by where they were made (the innermost frame in snaptun or qh3,
  so asyncio and the stdlib are charged to the caller that used them), and
  the total traced; without it RSS is the figure to quote (tracemalloc costs
  memory of its own);
* live Python objects per type per tunnel.

Bounded (at most 10,000 tunnels a step, every wait with a deadline) and every
process is stopped at the end. Nothing asserts a figure.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import capacity  # noqa: E402

MEMSERVE = Path(__file__).resolve().parent / "memserve.py"
MAX_TUNNELS = 10_000
SETTLE = 8.0
"""Seconds after the setups: handshake leftovers (qh3 keeps closed-path state a while) fade."""
_OURS = (f"{os.sep}snaptun{os.sep}", f"{os.sep}qh3{os.sep}")


def dump(pid: int, path: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Ask ``bench/memserve.py`` (``pid``) for its memory record; wait for it."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no memory record from the gateway")
        time.sleep(0.2)
    record: dict[str, Any] = pickle.loads(path.read_bytes())
    return record


def _owner(trace: tracemalloc.Traceback) -> str:
    """The innermost frame in snaptun or qh3 (and the allocating line if elsewhere)."""
    frames = list(reversed(trace))  # tracemalloc lists the oldest call first
    site = _short(frames[0].filename, frames[0].lineno)
    for frame in frames:
        if any(part in frame.filename for part in _OURS):
            owner = _short(frame.filename, frame.lineno)
            return owner if frame is frames[0] else f"{owner} ({site})"
    return site


def _short(filename: str, lineno: int) -> str:
    for marker in ("site-packages" + os.sep, "src" + os.sep, "lib" + os.sep + "python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{lineno}"


def by_owner(
    new: tracemalloc.Snapshot, old: tracemalloc.Snapshot, added: int
) -> list[tuple[str, float, float]]:
    """(owner, bytes per tunnel, blocks per tunnel), largest first."""
    sizes: dict[str, int] = {}
    counts: dict[str, int] = {}
    for stat in new.compare_to(old, "traceback"):
        key = _owner(stat.traceback)
        sizes[key] = sizes.get(key, 0) + stat.size_diff
        counts[key] = counts.get(key, 0) + stat.count_diff
    rows = [(k, sizes[k] / added, counts[k] / added) for k in sizes]
    return sorted(rows, key=lambda r: -abs(r[1]))


def report(a: dict[str, Any], b: dict[str, Any], added: int, top: int) -> str:
    lines = [f"per tunnel, from the difference of {added:,} added idle tunnels:"]
    rss = (b["rss_kib"] - a["rss_kib"]) * 1024 / added
    lines.append(f"  RSS                      {rss / 1024:8.2f} KiB")
    if a["mallinfo"] and b["mallinfo"]:
        used = (b["mallinfo"]["uordblks"] - a["mallinfo"]["uordblks"]) / added
        mmapped = (b["mallinfo"]["hblkhd"] - a["mallinfo"]["hblkhd"]) / added
        lines.append(f"  malloc heap in use       {used / 1024:8.2f} KiB")
        lines.append(f"  malloc mmapped blocks    {mmapped / 1024:8.2f} KiB")
    if a["traced"] is not None and b["traced"] is not None:
        traced = (b["traced"] - a["traced"]) / added
        lines.append(f"  traced (Python)          {traced / 1024:8.2f} KiB")
    types = [
        (name, (b["types"].get(name, 0) - a["types"].get(name, 0)) / added) for name in b["types"]
    ]
    types = sorted((t for t in types if abs(t[1]) >= 0.5), key=lambda t: -t[1])
    lines.append("  live Python objects per tunnel (gc-tracked), by type:")
    lines += [f"    {n:6.2f}  {name}" for name, n in types[:top]]
    if a["snapshot"] is not None and b["snapshot"] is not None:
        lines.append("  Python allocations per tunnel, by allocating line (snaptun/qh3 frame):")
        for owner, size, count in by_owner(b["snapshot"], a["snapshot"], added)[:top]:
            lines.append(f"    {size:9.0f} B {count:6.2f} blocks  {owner}")
    return "\n".join(lines)


def run(tunnels: int, trace: int, holders_n: int, work: Path) -> list[dict[str, Any]]:
    env = {"SNAPTUN_MEMDUMP": str(work / "memdump.pickle")}
    if trace:
        env["SNAPTUN_TRACEMALLOC"] = str(trace)
    launcher = (sys.executable, str(MEMSERVE))
    with capacity.start_gateway(work / "gw", 2 * tunnels, launcher, env) as gateway:
        pid = gateway.proc.pid
        holders = capacity.Holders(gateway, holders_n, 16, work)
        records = []
        try:
            for step in (1, 2):
                budget = 60 + tunnels / capacity.MIN_SETUP_RATE
                answers = holders.ask(
                    [f"open {k}" for k in capacity._split(tunnels, holders_n)], budget
                )
                live = gateway.live_tunnels()
                print(f"step {step}: {answers} gateway live {live}", file=sys.stderr)
                if live != step * tunnels:
                    raise RuntimeError(f"only {live} of {step * tunnels} tunnels live")
                time.sleep(SETTLE)
                records.append(dump(pid, Path(env["SNAPTUN_MEMDUMP"])))
        finally:
            holders.close()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, default=1000, help="N (then 2N) idle tunnels")
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument("--holders", type=int, default=2)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--save", type=Path, help="keep both records in this pickle file")
    parser.add_argument("--load", type=Path, help="report on records saved with --save")
    args = parser.parse_args(argv)
    if not 1 <= args.tunnels <= MAX_TUNNELS:
        parser.error(f"--tunnels must lie in 1..{MAX_TUNNELS}")
    if args.load is not None:
        tunnels, records = pickle.loads(args.load.read_bytes())
    else:
        capacity._exit_on_sigterm()
        with tempfile.TemporaryDirectory(prefix="snaptun-memory-") as tmp:
            tunnels, records = args.tunnels, run(args.tunnels, args.trace, args.holders, Path(tmp))
        if args.save is not None:
            args.save.write_bytes(pickle.dumps((tunnels, records)))
    print(report(records[0], records[1], tunnels, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
