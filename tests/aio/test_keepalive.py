"""Keep-alives hold an idle tunnel open past the idle timeout, from either side.

Short settings (an idle timeout of 1.5 s, keep-alives every 0.3 s) so the
tunnels idle for several idle timeouts within seconds. The client pings every
keep-alive interval; the server pings only a peer that has been quiet for 1.5
intervals (so it never pings a client that pings, and still keeps a silent
client such as the Rust reference alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.aio.server import Server
from snaptun.core.allocator import AddressManager
from snaptun.core.tokens import StaticTokenValidator
from snaptun.errors import AcceptError, ControlError
from tests.aio.harness import ISD_AS, POOLS, TOKEN
from tests.conftest import SNAPTUN_REF

IDLE = 1.5
KEEP_ALIVE = 0.3
HOLD = 4 * IDLE


@contextlib.asynccontextmanager
async def echo_server(
    certs: tuple[Path, Path], keep_alive: float | None
) -> AsyncIterator[tuple[int, list[quic.QuicConnection]]]:
    """Tunnels on loopback with short idle settings; every datagram is echoed."""
    settings = quic.QuicSettings(idle_timeout=IDLE, keep_alive=keep_alive)
    endpoint = await quic.listen(
        "127.0.0.1", 0, cert_file=certs[0], key_file=certs[1], settings=settings
    )
    server: Server[Any] = Server(AddressManager(ISD_AS, POOLS), StaticTokenValidator(TOKEN, 600))
    conns: list[quic.QuicConnection] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(conn: quic.QuicConnection) -> None:
        conns.append(conn)
        try:
            sender, receiver, control = await server.accept_with_timeout(conn)
        except AcceptError:
            return
        receiver.set_sink(sender.send)
        with contextlib.suppress(ControlError):
            await control.run()

    async def accept() -> None:
        while True:
            task = asyncio.ensure_future(handle(await endpoint.accept()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    accepting = asyncio.ensure_future(accept())
    try:
        yield endpoint.local_address[1], conns
    finally:
        accepting.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(accepting, *tasks, return_exceptions=True)
        endpoint.close()


async def hold_tunnel(
    port: int, cert: Path, keep_alive: float | None
) -> tuple[quic.QuicConnection, bool]:
    """Set up a tunnel, idle for HOLD seconds; (connection, whether an echo came back after)."""
    settings = quic.QuicSettings(idle_timeout=IDLE, keep_alive=keep_alive)
    async with quic.connect("127.0.0.1", port, ca_file=cert, settings=settings) as conn:
        sender, receiver, _ = await ClientBuilder(TOKEN).connect(conn)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), HOLD)
        if conn.closed is not None:
            return conn, False
        sender.send(b"still there?")
        try:
            echoed = await asyncio.wait_for(receiver.receive(), 2.0) == b"still there?"
        except Exception:
            echoed = False
        return conn, echoed


async def test_a_pinging_client_keeps_the_tunnel_and_the_server_does_not_ping_it(
    certs: tuple[Path, Path],
) -> None:
    async with echo_server(certs, KEEP_ALIVE) as (port, conns):
        client, echoed = await hold_tunnel(port, certs[0], KEEP_ALIVE)
        assert echoed, client.closed
        server_side = conns[-1]
        assert server_side.closed is None or not server_side.closed.by_peer or echoed
        # The client pinged every interval; the server heard it and stayed quiet.
        assert client._ping_uid >= HOLD / KEEP_ALIVE / 2
        assert server_side._ping_uid < client._ping_uid / 2


async def test_the_server_keeps_a_silent_client_alive(certs: tuple[Path, Path]) -> None:
    async with echo_server(certs, KEEP_ALIVE) as (port, conns):
        client, echoed = await hold_tunnel(port, certs[0], None)
        assert echoed, client.closed
        assert client._ping_uid == 0
        assert conns[-1]._ping_uid >= 2


async def test_without_keep_alives_the_idle_timeout_ends_the_tunnel(
    certs: tuple[Path, Path],
) -> None:
    """The other tests could not pass by accident: with nobody pinging, the tunnel dies."""
    async with echo_server(certs, None) as (port, _):
        client, echoed = await hold_tunnel(port, certs[0], None)
        assert not echoed
        assert client.closed is not None


@pytest.mark.skipif(not SNAPTUN_REF.exists(), reason=f"snaptun-ref not found at {SNAPTUN_REF}")
async def test_the_rust_client_holds_past_the_idle_timeout(certs: tuple[Path, Path]) -> None:
    """snaptun-ref's client sends no keep-alives: the server's pings must hold it.

    quinn takes the smaller of both idle timeouts, so our 1.5 s applies to it.
    """
    async with echo_server(certs, KEEP_ALIVE) as (port, conns):
        proc = await asyncio.create_subprocess_exec(
            str(SNAPTUN_REF),
            "client",
            f"--connect=127.0.0.1:{port}",
            f"--ca={certs[0]}",
            "--count=1",
            f"--hold={HOLD}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), HOLD + 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, (out.decode()[-500:], err.decode()[-500:])
        assert b'"ok":true' in out
        assert conns[-1]._ping_uid >= 2
