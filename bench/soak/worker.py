"""Runs one scenario's load in a process of its own: ``python -m bench.soak.worker MODULE JSON``.

Calls ``bench.soak.<MODULE>.load(params)`` and prints its result as one JSON
line. A process of its own keeps the load off the probe's event loop and
socket buffers (bench/soak/harness.py).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys


def main() -> int:
    module = importlib.import_module(f"bench.soak.{sys.argv[1]}")
    params = json.loads(sys.argv[2])
    result = asyncio.run(asyncio.wait_for(module.load(params), params.get("max_seconds", 300)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
