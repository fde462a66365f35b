"""A snaptun server on loopback for the asyncio-layer tests, and raw-request helpers."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snaptun.aio import quic
from snaptun.aio.server import Control, Receiver, Sender, Server
from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager
from snaptun.core.tokens import StaticTokenValidator, TokenValidator
from snaptun.errors import AcceptError, ConnectionLost, ControlError, ReceivePacketError
from snaptun.metrics import Metrics

ISD_AS = IsdAs.parse("1-ff00:0:110")
POOLS = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64"))
TOKEN = "ANAPAYA"


@dataclass
class Tunnel:
    """One accepted tunnel as the server sees it."""

    sender: Sender[Any]
    receiver: Receiver[Any]
    control: Control[Any]
    result: asyncio.Future[BaseException | None]


@dataclass
class Harness:
    """A running server: its port, allocator, and what happened to each connection."""

    port: int
    cert: Path
    allocator: AddressManager
    metrics: Metrics
    tunnels: asyncio.Queue[Tunnel] = field(default_factory=asyncio.Queue)
    refused: asyncio.Queue[AcceptError] = field(default_factory=asyncio.Queue)
    connections: list[quic.QuicConnection] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def connect(self, **settings: Any) -> AsyncIterator[quic.QuicConnection]:
        """A client QUIC connection to the server."""
        qs = quic.QuicSettings(**settings) if settings else None
        async with quic.connect("127.0.0.1", self.port, ca_file=self.cert, settings=qs) as conn:
            yield conn

    async def next_tunnel(self, timeout: float = 5.0) -> Tunnel:
        """The next tunnel the server accepted."""
        return await asyncio.wait_for(self.tunnels.get(), timeout)

    async def next_refusal(self, timeout: float = 6.0) -> AcceptError:
        """The next setup the server refused."""
        return await asyncio.wait_for(self.refused.get(), timeout)


async def _listen(cert: Path, key: Path, port: int) -> quic.QuicEndpoint:
    # A server that just stopped on this port frees it on a later loop iteration.
    for _ in range(50):
        try:
            return await quic.listen("127.0.0.1", port, cert_file=cert, key_file=key)
        except OSError:
            if not port:
                raise
            await asyncio.sleep(0.02)
    raise AssertionError(f"port {port} stayed busy")


@contextlib.asynccontextmanager
async def running_server(
    certs: tuple[Path, Path],
    *,
    validator: TokenValidator[Any] | None = None,
    allocator: AddressManager | None = None,
    echo: bool = True,
    clock: Callable[[], float] | None = None,
    port: int = 0,
) -> AsyncIterator[Harness]:
    """Serve tunnels on loopback (a free port unless ``port``); echo unless ``echo`` is False."""
    cert, key = certs
    endpoint = await _listen(cert, key, port)
    allocator = allocator or AddressManager(
        ISD_AS, POOLS, hold_time=600.0, clock=clock or time.time
    )
    metrics = Metrics.isolated()
    extra: dict[str, Any] = {"clock": clock} if clock else {}
    server: Server[Any] = Server(
        allocator, validator or StaticTokenValidator(TOKEN, 60), metrics, **extra
    )
    harness = Harness(endpoint.local_address[1], cert, allocator, metrics)
    tasks: set[asyncio.Task[None]] = set()

    async def drive(tunnel: Tunnel) -> None:
        try:
            await tunnel.control.run()
            tunnel.result.set_result(None)
        except ControlError as exc:
            tunnel.result.set_result(exc)

    async def pump(tunnel: Tunnel) -> None:
        with contextlib.suppress(ReceivePacketError):
            while True:
                packet = await tunnel.receiver.receive()
                if echo:
                    await tunnel.sender.send_wait(packet)

    async def handle(conn: quic.QuicConnection) -> None:
        harness.connections.append(conn)
        try:
            sender, receiver, control = await server.accept_with_timeout(conn)
        except AcceptError as exc:
            harness.refused.put_nowait(exc)
            return
        tunnel = Tunnel(sender, receiver, control, asyncio.get_running_loop().create_future())
        harness.tunnels.put_nowait(tunnel)
        for job in (drive(tunnel), pump(tunnel)):
            task = asyncio.ensure_future(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def accept_loop() -> None:
        while True:
            conn = await endpoint.accept()
            task = asyncio.ensure_future(handle(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    loop_task = asyncio.ensure_future(accept_loop())
    try:
        yield harness
    finally:
        loop_task.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(loop_task, *tasks, return_exceptions=True)
        endpoint.close()


@dataclass
class RawResult:
    """What a raw request exchange produced."""

    responses: list[bytes | BaseException]
    close: ConnectionLost | None


async def raw_exchange(
    harness: Harness, payloads: Sequence[bytes], *, fin: bool = True, wait_close: float = 5.0
) -> RawResult:
    """Send each payload on its own stream; collect answers and how the connection closed."""
    responses: list[bytes | BaseException] = []
    async with harness.connect() as conn:
        for payload in payloads:
            data = b""
            try:
                stream = conn.open_stream()
                stream.write(payload, end_stream=fin)
                async with asyncio.timeout(wait_close):
                    while chunk := await stream.read():
                        data += chunk
                responses.append(data)
            except (ConnectionLost, ConnectionError, TimeoutError) as exc:
                responses.append(exc)
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), wait_close)
        return RawResult(responses, conn.closed)
