"""``python -m bench.soak [--scenario NAME|all] [--scale smoke|full]``: one JSON line per scenario.

Exit status 0 when every scenario's verdict is ``pass``, 1 otherwise. Every
scenario runs in a fresh temporary directory (state, gateway logs), removed
afterwards unless ``--keep`` names a directory to keep them in.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import sys
import tempfile
from pathlib import Path

from bench.soak import SCENARIOS

TIME_LIMIT = {"smoke": 60.0, "full": 240.0}
"""Seconds one scenario may take before it is abandoned (and fails)."""


async def run_one(name: str, scale: str, work: Path) -> dict[str, object]:
    module = importlib.import_module(f"bench.soak.{name}")
    try:
        result: dict[str, object] = await asyncio.wait_for(
            module.run(scale, work), TIME_LIMIT[scale]
        )
    except Exception as exc:  # reported as a fail, with what went wrong
        result = {
            "scenario": name,
            "scale": scale,
            "verdict": "fail",
            "reasons": [f"{type(exc).__name__}: {exc}"],
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--scale", choices=["smoke", "full"], default="full")
    parser.add_argument("--keep", type=Path, help="keep state and logs under this directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: children are killed
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    ok = True
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"snaptun-soak-{name}-") as tmp:
            work = args.keep / name if args.keep else Path(tmp)
            result = asyncio.run(run_one(name, args.scale, work))
        print(json.dumps(result), flush=True)
        ok = ok and result.get("verdict") == "pass"
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
