"""A tunnel survives its client's address changing (NAT rebinding, a new client socket).

Between our client and our server sits :class:`RebindingNat`, a loopback UDP
NAT: it forwards the client's datagrams to the server from one of its
server-facing sockets, and only the current one lets the server's answers
back (an old mapping is gone, as after a real rebinding). Moving it to a new
socket, or back to an earlier one, changes the client's address as the server
sees it. Each test checks that echoes keep flowing (a bounded loss right at
the move, none once the path settled), that a renewal succeeds afterwards,
and that the server reports the address it now talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder, ClientControl, ClientReceiver, ClientSender
from tests.aio.harness import TOKEN, Harness, running_server
from tests.conftest import SNAPTUN_REF

LOOPBACK = "127.0.0.1"
ECHO_WAIT = 0.25
"""Seconds to wait for one echo before counting it lost (loopback answers in ~1 ms)."""
AT_MOVE_LOSS = 2
"""Echoes that may be lost right after a move (the server validates the new path)."""


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket of the NAT, handing what it receives to a callback."""

    def __init__(self, on_datagram: Callable[[_Socket, bytes, Any], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(self, data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


class RebindingNat:
    """A one-client UDP NAT on loopback whose outside port can change on command."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.inside: _Socket | None = None
        self.outside: list[_Socket] = []
        self.current = 0
        self.client: Any = None
        self.last_from_client = b""
        self.dropped = 0
        """Server datagrams that reached an outside socket no longer in use."""

    @property
    def port(self) -> int:
        """Where the client sends."""
        assert self.inside is not None
        return self.inside.port

    @property
    def outside_port(self) -> int:
        """The client's port as the server now sees it."""
        return self.outside[self.current].port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.inside = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_client), local_addr=(LOOPBACK, 0)
        )
        await self.rebind()

    async def rebind(self) -> int:
        """Send from a fresh outside socket from now on; returns its index."""
        loop = asyncio.get_running_loop()
        _, sock = await loop.create_datagram_endpoint(
            lambda: _Socket(self._from_server), local_addr=(LOOPBACK, 0)
        )
        self.outside.append(sock)
        self.current = len(self.outside) - 1
        return self.current

    def return_to(self, index: int) -> None:
        """Send from an earlier outside socket again."""
        self.current = index

    def close(self) -> None:
        for sock in (self.inside, *self.outside):
            if sock is not None and sock.transport is not None:
                sock.transport.close()

    def send_from(self, index: int, data: bytes) -> None:
        """Send ``data`` to the server from outside socket ``index`` (spoofing, replaying)."""
        self.outside[index].send(data, self.server)

    def _from_client(self, _: _Socket, data: bytes, addr: Any) -> None:
        self.client = addr
        self.last_from_client = data
        self.outside[self.current].send(data, self.server)

    def _from_server(self, sock: _Socket, data: bytes, _addr: Any) -> None:
        if sock is self.outside[self.current] and self.client is not None:
            assert self.inside is not None
            self.inside.send(data, self.client)
        else:
            self.dropped += 1


class Tunnel:
    """Our client's tunnel, with an echo probe that counts what did not come back."""

    def __init__(
        self, conn: quic.QuicConnection, parts: tuple[ClientSender, ClientReceiver, ClientControl]
    ) -> None:
        self.conn = conn
        self.sender, self.receiver, self.control = parts
        self._sequence = 0

    async def echoes_lost(self, count: int) -> int:
        """Echo ``count`` datagrams one at a time; how many did not come back."""
        lost = 0
        for _ in range(count):
            self._sequence += 1
            payload = b"probe-%d" % self._sequence
            self.sender.send(payload)
            try:
                async with asyncio.timeout(ECHO_WAIT):
                    while await self.receiver.receive() != payload:
                        pass  # a late echo of an earlier probe
            except TimeoutError:
                lost += 1
        return lost


@contextlib.asynccontextmanager
async def nat_tunnel(
    certs: tuple[Path, Path],
) -> AsyncIterator[tuple[Harness, RebindingNat, Tunnel]]:
    """A server, a NAT in front of it, and our client's tunnel through the NAT."""
    async with running_server(certs) as harness:
        nat = RebindingNat((LOOPBACK, harness.port))
        await nat.start()
        try:
            async with quic.connect(LOOPBACK, nat.port, ca_file=harness.cert) as conn:
                tunnel = Tunnel(conn, await ClientBuilder(TOKEN).connect(conn))
                assert await tunnel.echoes_lost(10) == 0
                yield harness, nat, tunnel
        finally:
            nat.close()


def server_side(harness: Harness) -> quic.QuicConnection:
    (conn,) = harness.connections
    return conn


async def assert_settled(harness: Harness, tunnel: Tunnel, port: int) -> None:
    """After a move: few echoes lost at first, none once settled, a renewal works."""
    assert await tunnel.echoes_lost(5) <= AT_MOVE_LOSS
    assert await tunnel.echoes_lost(20) == 0
    await asyncio.wait_for(tunnel.control.renew_session(), 3)
    assert await tunnel.echoes_lost(5) == 0
    assert server_side(harness).remote_address == (LOOPBACK, port)


async def test_one_move(certs: tuple[Path, Path]) -> None:
    async with nat_tunnel(certs) as (harness, nat, tunnel):
        assert server_side(harness).remote_address == (LOOPBACK, nat.outside_port)
        await nat.rebind()
        await assert_settled(harness, tunnel, nat.outside_port)


async def test_two_moves(certs: tuple[Path, Path]) -> None:
    async with nat_tunnel(certs) as (harness, nat, tunnel):
        for _ in range(2):
            await nat.rebind()
            await assert_settled(harness, tunnel, nat.outside_port)


async def test_move_and_back(certs: tuple[Path, Path]) -> None:
    async with nat_tunnel(certs) as (harness, nat, tunnel):
        first = nat.current
        await nat.rebind()
        await assert_settled(harness, tunnel, nat.outside_port)
        nat.return_to(first)
        await assert_settled(harness, tunnel, nat.outside_port)


async def test_client_socket_swap(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness, harness.connect() as conn:
        tunnel = Tunnel(conn, await ClientBuilder(TOKEN).connect(conn))
        assert await tunnel.echoes_lost(10) == 0
        before = conn.local_address
        await conn.rebind()
        after = conn.local_address
        assert before is not None
        assert after is not None
        assert after[1] != before[1]
        await assert_settled(harness, tunnel, after[1])


async def test_a_forged_or_replayed_datagram_from_the_old_address_moves_nothing(
    certs: tuple[Path, Path],
) -> None:
    """Only an authenticated, new packet brings the server back to an address."""
    async with nat_tunnel(certs) as (harness, nat, tunnel):
        first = nat.current
        await nat.rebind()
        await assert_settled(harness, tunnel, nat.outside_port)
        genuine = nat.last_from_client
        forged = genuine[:-1] + bytes([genuine[-1] ^ 0xFF])  # breaks the AEAD tag
        for packet in (forged, genuine):
            await asyncio.sleep(0.2)  # the client's last ACKs are out: it is quiet until pinging
            nat.send_from(first, packet)
            await asyncio.sleep(0.1)  # loopback delivers in well under a millisecond
            # checked before the client sends again (its next packet would win anyway)
            assert server_side(harness).remote_address == (LOOPBACK, nat.outside_port)
            assert await tunnel.echoes_lost(5) == 0


@pytest.mark.skipif(not SNAPTUN_REF.exists(), reason=f"snaptun-ref not found at {SNAPTUN_REF}")
async def test_the_rust_client_moves_and_comes_back(certs: tuple[Path, Path]) -> None:
    """snaptun-ref's client renews every 0.3 s while the NAT moves it and back."""
    async with running_server(certs) as harness:
        nat = RebindingNat((LOOPBACK, harness.port))
        await nat.start()
        proc = await asyncio.create_subprocess_exec(
            str(SNAPTUN_REF),
            "client",
            f"--connect={LOOPBACK}:{nat.port}",
            f"--ca={certs[0]}",
            "--count=3",
            "--hold=2.4",
            "--renew-every=0.3",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            established = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert b'"established"' in established
            first = nat.current
            await asyncio.sleep(0.5)
            await nat.rebind()
            await asyncio.sleep(0.8)
            moved = nat.outside_port
            nat.return_to(first)
            await asyncio.sleep(0.8)
            assert server_side(harness).remote_address == (LOOPBACK, nat.outside_port)
            assert nat.outside_port != moved
            out, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            nat.close()
        assert proc.returncode == 0, (out.decode()[-500:], err.decode()[-500:])
        assert b'"ok":true' in out
