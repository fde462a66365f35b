"""An ended connection is freed by reference counting, not left to the cyclic GC.

The soak's ``bogus`` scenario (docs/RELIABILITY.md) kept ~48 KiB per closed
connection: qh3's reference cycles made every ended connection garbage that
only a full collection frees, and a gateway seldom runs one. Here the cyclic
GC is off, so a connection that is not freed at once stays visibly alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snaptun.aio import quic
from snaptun.aio.server import Server
from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager
from snaptun.core.control import RequestKind, encode_request
from snaptun.core.tokens import StaticTokenValidator
from snaptun.errors import AcceptTimeout
from tests.aio.harness import POOLS

BOGUS = 6


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def bogus_client(port: int, cert: Path, n: int, done: asyncio.Event) -> weakref.ref[Any]:
    """Finish TLS, send half a request on odd ``n``, wait for the gateway's close."""
    async with quic.connect("127.0.0.1", port, ca_file=cert) as conn:
        if n % 2:
            request = encode_request(RequestKind.SESSION_RENEWAL, "ANAPAYA")
            conn.open_stream().write(request[: len(request) // 2])
        lost = await asyncio.wait_for(conn.wait_closed(), 5)
        assert lost.code == 2
        assert lost.by_peer
        await done.wait()
        return weakref.ref(conn)


async def test_connections_closed_at_the_setup_timeout_are_freed_at_once(
    certs: tuple[Path, Path],
) -> None:
    cert, key = certs
    allocator = AddressManager(IsdAs.parse("1-ff00:0:110"), POOLS, hold_time=60.0)
    server: Server[Any] = Server(allocator, StaticTokenValidator("ANAPAYA", 60), accept_timeout=0.3)
    served: list[weakref.ref[Any]] = []
    with cyclic_gc_off():
        endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
        try:

            async def serve_one() -> None:
                conn = await endpoint.accept()
                served.append(weakref.ref(conn))
                try:
                    await server.accept_with_timeout(conn)
                except AcceptTimeout:
                    pass
                else:  # pragma: no cover - the clients never set up
                    raise AssertionError("a bogus connection was set up")

            serving = [asyncio.ensure_future(serve_one()) for _ in range(BOGUS)]
            done = asyncio.Event()
            clients = [
                asyncio.ensure_future(bogus_client(endpoint.local_address[1], cert, n, done))
                for n in range(BOGUS)
            ]
            await asyncio.wait_for(asyncio.gather(*serving), 10)
            done.set()
            client_refs = await asyncio.wait_for(asyncio.gather(*clients), 10)
            del serving, clients
            assert len(served) == BOGUS
            refs = [*served, *client_refs]
            # qh3 keeps an ended connection for its draining period (3 PTOs), then lets go.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while any(ref() is not None for ref in refs):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            assert endpoint.known_connection_ids == 0
            assert [ref for ref in served if ref() is not None] == []
            assert [ref for ref in client_refs if ref() is not None] == []
        finally:
            endpoint.close()
