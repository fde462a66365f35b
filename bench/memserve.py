"""``snaptun serve`` that reports where its memory is, for ``bench/memory.py``.

``python bench/memserve.py SERVE-ARGS...`` runs ``snaptun serve`` unchanged,
except that on SIGUSR1 it writes a pickle to ``$SNAPTUN_MEMDUMP`` (then
renames it into place, so a reader never sees half a file) holding: VmRSS,
glibc's ``mallinfo2`` (bytes malloc hands out: qh3's Rust state, Python's
large objects), live Python objects per type, and a tracemalloc snapshot when
``$SNAPTUN_TRACEMALLOC`` (frames per traceback) is set. tracemalloc starts
before snaptun is imported, so the snapshot covers everything the gateway
allocates afterwards; it costs time and memory of its own, so RSS is read
from runs without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> dict[str, int]:
    """glibc's heap figures (empty where mallinfo2 is missing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        return {name: int(getattr(info, name)) for name, _ in _MallInfo2._fields_}
    return {}


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _types() -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    return counts


def _dump(_signum: int, _frame: FrameType | None) -> None:
    target = Path(os.environ["SNAPTUN_MEMDUMP"])
    gc.collect()
    record: dict[str, Any] = {
        "rss_kib": rss_kib(),
        "mallinfo": mallinfo(),
        "types": _types(),
        "snapshot": tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None,
        "traced": tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None,
    }
    partial = target.with_suffix(".part")
    partial.write_bytes(pickle.dumps(record))
    partial.replace(target)


def main() -> int:
    frames = os.environ.get("SNAPTUN_TRACEMALLOC")
    if frames:
        tracemalloc.start(int(frames))
    signal.signal(signal.SIGUSR1, _dump)
    from snaptun.cli.main import main as snaptun_main  # noqa: PLC0415 - after tracemalloc starts

    return snaptun_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
