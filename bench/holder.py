"""Holds many idle tunnels to a gateway from one process, for the capacity run.

Driven over stdin/stdout by ``bench/capacity.py`` (one JSON line per answer)::

    open N     set up N more tunnels (each with its own identity), then answer
               {"event": "opened", "live": L, "failed": F, "seconds": S, "error": ...}
    count      answer {"event": "count", "live": L, "failed": F}
    quit / EOF close every tunnel, answer {"event": "done", ...} and exit

Each tunnel is a library client (``quic.connect`` + ``ClientBuilder``) on its
own UDP socket, with a token minted from the gateway's dev signing key. The
tunnels stay idle: only QUIC keep-alives cross them. Why not one
``snaptun-ref client --hold`` per tunnel: each such process holds ~4.4 MiB RSS
(measured), which is gigabytes at 20,000 tunnels; this process holds
thousands. Bounded: at most ``--max-tunnels`` tunnels, every setup within
``--setup-timeout`` seconds, and the process exits after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.core.tokens import SnapTokenClaims, mint_token
from snaptun.keyfiles import load_private_key

TOKEN_TTL = 7200
"""Seconds a minted token is valid: longer than any capacity run, so no renewal happens."""


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each tunnel holds a socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Holder:
    """The tunnels of this process; each lives in a task until :meth:`close`."""

    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.connect.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.fingerprint: str = args.fingerprint
        self.key = load_private_key(Path(args.signing_key)) if args.signing_key else None
        self.static_token: str | None = args.token
        self.setup_timeout: float = args.setup_timeout
        self.max_tunnels: int = args.max_tunnels
        self.limit = asyncio.Semaphore(args.concurrency)
        self.stop = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.live = 0
        self.failed = 0
        self.errors: dict[str, int] = {}

    def token(self) -> str:
        if self.key is None:
            assert self.static_token is not None
            return self.static_token
        claims = SnapTokenClaims(pssid=uuid.uuid4(), exp=int(time.time()) + TOKEN_TTL)
        return mint_token(self.key, claims)

    async def open(self, count: int) -> dict[str, Any]:
        """Set up ``count`` more tunnels (bounded by ``max_tunnels``); wait for each outcome."""
        count = max(0, min(count, self.max_tunnels - len(self.tasks)))
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        outcomes = [loop.create_future() for _ in range(count)]
        for outcome in outcomes:
            task = asyncio.ensure_future(self._hold(outcome))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if outcomes:
            await asyncio.wait(outcomes)
        return {"event": "opened", "seconds": round(time.monotonic() - started, 2), **self.count()}

    def count(self) -> dict[str, Any]:
        return {"live": self.live, "failed": self.failed, "errors": dict(self.errors)}

    async def _hold(self, outcome: asyncio.Future[bool]) -> None:
        up = False
        try:
            async with self.limit:
                async with asyncio.timeout(self.setup_timeout):
                    manager = quic.connect(
                        self.host,
                        self.port,
                        fingerprint=self.fingerprint,
                        timeout=self.setup_timeout,
                    )
                    conn = await manager.__aenter__()
                try:
                    async with asyncio.timeout(self.setup_timeout):
                        await ClientBuilder(self.token()).connect(conn)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await manager.__aexit__(None, None, None)
                    raise
            up = True
            self.live += 1
            outcome.set_result(True)
            try:
                closed = asyncio.ensure_future(conn.wait_closed())
                stop = asyncio.ensure_future(self.stop.wait())
                await asyncio.wait({closed, stop}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stop.cancel()
                if conn.closed is not None and not self.stop.is_set():
                    self._error("closed while held")
            finally:
                self.live -= 1
                with contextlib.suppress(Exception):
                    await manager.__aexit__(None, None, None)
        except Exception as exc:  # counted, never raised: the run reports failures
            if not up:
                self.failed += 1
                self._error(type(exc).__name__)
        finally:
            if not outcome.done():
                outcome.set_result(False)

    def _error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    async def close(self) -> None:
        self.stop.set()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=20)
            for task in pending:
                task.cancel()


async def serve(args: argparse.Namespace) -> None:
    holder = Holder(args)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    answer({"event": "ready", "nofile": raise_nofile()})
    try:
        async with asyncio.timeout(args.max_seconds):
            while line := (await reader.readline()).decode().strip():
                command, _, value = line.partition(" ")
                if command == "open":
                    answer(await holder.open(int(value)))
                elif command == "count":
                    answer({"event": "count", **holder.count()})
                elif command == "quit":
                    break
                else:
                    answer({"event": "error", "error": f"unknown command {command!r}"})
    except TimeoutError:
        pass
    finally:
        await holder.close()
    answer({"event": "done", **holder.count()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, metavar="HOST:PORT")
    parser.add_argument("--fingerprint", required=True)
    auth = parser.add_mutually_exclusive_group(required=True)
    auth.add_argument("--signing-key", help="mint a token per tunnel with this key (PEM)")
    auth.add_argument("--token", help="one static token for every tunnel (snaptun-ref server)")
    parser.add_argument("--concurrency", type=int, default=16, help="setups in flight")
    parser.add_argument("--max-tunnels", type=int, default=8000)
    parser.add_argument("--setup-timeout", type=float, default=15.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    raise_nofile()
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator, as the CLI uses it

        uvloop.run(serve(args))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
