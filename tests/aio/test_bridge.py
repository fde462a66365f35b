"""TunnelBridge against an in-process snaptun server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.aio.bridge import (
    Backoff,
    ReconnectsExhausted,
    TokenSource,
    TunnelBridge,
    TunnelConnected,
    TunnelRefused,
    builder_factory,
)
from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressAllocation, AddressManager
from snaptun.core.tokens import SnapTokenClaims, StaticTokenValidator, Token, TokenValidator
from tests.aio.harness import ISD_AS, POOLS, TOKEN, running_server

FAST = Backoff(initial=0.05, maximum=0.2)
CONNECT_TIMEOUT = 1.0
IDENTITY = uuid.UUID("0b5e2d6a-53c4-4c36-9a34-8f6f3f1f7c11")


# ---- helpers ---------------------------------------------------------------------------------


class UdpPeer(asyncio.DatagramProtocol):
    """A loopback UDP socket with a queue of what it received."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.inbox.put_nowait((data, (str(addr[0]), int(addr[1]))))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def recv(self, timeout: float = 3.0) -> bytes:
        data, _ = await asyncio.wait_for(self.inbox.get(), timeout)
        return data

    async def nothing(self, wait: float = 0.3) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.inbox.get(), wait)
            return False
        return True


@contextlib.asynccontextmanager
async def udp_peer() -> AsyncIterator[UdpPeer]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    peer.transport = transport
    try:
        yield peer
    finally:
        transport.close()


@dataclass
class Running:
    bridge: TunnelBridge
    task: asyncio.Task[None]
    events: asyncio.Queue[TunnelConnected] = field(default_factory=asyncio.Queue)

    async def connected(self, timeout: float = 8.0) -> TunnelConnected:
        getter = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait(
            {getter, self.task}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            self.task.result()
            raise AssertionError("the bridge stopped without connecting")
        raise AssertionError(f"no connection within {timeout} s")


def connector(port: int, cert: Path, timeout: float = CONNECT_TIMEOUT) -> Any:
    def connect() -> Any:
        return quic.connect("127.0.0.1", port, ca_file=cert, timeout=timeout)

    return connect


@contextlib.asynccontextmanager
async def bridge_to(
    port: int,
    cert: Path,
    source: TokenSource | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    **kwargs: Any,
) -> AsyncIterator[Running]:
    """Run a TunnelBridge to 127.0.0.1:port; stop it and check it stopped on exit."""
    factory = builder_factory(source or TokenSource(token=TOKEN), renew_threshold=300)
    kwargs.setdefault("backoff", FAST)
    connect = connector(port, cert, connect_timeout)
    bridge = TunnelBridge(connect, factory, ("127.0.0.1", 0), **kwargs)
    await bridge.open()
    events: asyncio.Queue[TunnelConnected] = asyncio.Queue()
    bridge.on_connected = events.put_nowait
    task = asyncio.ensure_future(bridge.run())
    running = Running(bridge, task, events)
    try:
        yield running
    finally:
        bridge.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        assert task.done()


class RecordingAllocator(AddressManager):
    """An AddressManager that remembers every address asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[str] = []

    def allocate(
        self, isd_as: IsdAs, prefix: Any, claims: Token, *, now: float | None = None
    ) -> AddressAllocation:
        self.requests.append(str(prefix))
        return super().allocate(isd_as, prefix, claims, now=now)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def echo_round(running: Running, peer: UdpPeer, data: bytes) -> None:
    peer.send(data, running.bridge.local_address)
    assert await peer.recv() == data


# ---- packets -------------------------------------------------------------------------------


async def test_datagrams_come_back_byte_for_byte(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs) as harness,
        bridge_to(harness.port, certs[0]) as running,
        udp_peer() as peer,
    ):
        info = await running.connected()
        assert info.local == running.bridge.local_address
        assert info.max_packet_size is not None
        assert info.max_packet_size >= 1400
        assert len(info.assigned) == 1
        assert info.valid_until is not None
        assert info.valid_until > time.time()
        record = info.as_record()
        assert record["event"] == "connected"
        assert record["local"] == f"127.0.0.1:{info.local[1]}"
        assert record["assigned"] == [{"isd_as": "1-ff00:0:110", "ip": str(info.assigned[0].ip)}]
        payloads = [b"\x00", bytes(range(256)) * 3, b"\xab" * info.max_packet_size]
        for data in payloads:
            await echo_round(running, peer, data)
        counters = running.bridge.counters
        assert (counters.sent, counters.received) == (len(payloads), len(payloads))
        assert counters.connects == 1


async def test_forward_to_delivers_to_another_socket(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs) as harness,
        udp_peer() as source,
        udp_peer() as sink,
        bridge_to(harness.port, certs[0], forward_to=None) as running,
    ):
        running.bridge.forward_to = sink.address
        await running.connected()
        source.send(b"to the sink", running.bridge.local_address)
        assert await sink.recv() == b"to the sink"
        assert await source.nothing()
        assert running.bridge.last_sender is None


async def test_packets_before_any_local_sender_are_counted(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs) as harness,
        bridge_to(harness.port, certs[0]) as running,
        udp_peer() as peer,
    ):
        await running.connected()
        tunnel = await harness.next_tunnel()
        tunnel.sender.send(b"nobody to tell")
        for _ in range(50):
            if running.bridge.counters.dropped_no_peer:
                break
            await asyncio.sleep(0.02)
        assert running.bridge.counters.dropped_no_peer == 1
        await echo_round(running, peer, b"now there is")
        tunnel.sender.send(b"unsolicited")
        assert await peer.recv() == b"unsolicited"


async def test_oversized_datagrams_are_dropped_counted_and_logged(
    certs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        running_server(certs) as harness,
        bridge_to(harness.port, certs[0]) as running,
        udp_peer() as peer,
    ):
        info = await running.connected()
        assert info.max_packet_size is not None
        with caplog.at_level(logging.WARNING, logger="snaptun.aio.bridge"):
            peer.send(b"x" * (info.max_packet_size + 1), running.bridge.local_address)
            assert await peer.nothing()
        assert running.bridge.counters.dropped_oversize == 1
        assert running.bridge.counters.sent == 0
        assert any("datagram" in r.getMessage() for r in caplog.records)
        await echo_round(running, peer, b"small is fine")


async def test_local_datagrams_while_offline_are_counted(certs: tuple[Path, Path]) -> None:
    factory = builder_factory(TokenSource(token=TOKEN))
    bridge = TunnelBridge(connector(free_udp_port(), certs[0]), factory, max_reconnects=0)
    async with udp_peer() as peer:
        peer.send(b"too early", await bridge.open())
        for _ in range(50):
            if bridge.counters.dropped_offline:
                break
            await asyncio.sleep(0.01)
        bridge.close()
    assert bridge.counters.dropped_offline == 1


# ---- lifecycle -------------------------------------------------------------------------------


async def test_stop_closes_the_tunnel_cleanly(certs: tuple[Path, Path]) -> None:
    async with running_server(certs) as harness:
        async with bridge_to(harness.port, certs[0]) as running:
            await running.connected()
            tunnel = await harness.next_tunnel()
        assert running.task.result() is None
        assert await asyncio.wait_for(tunnel.result, 3) is None  # the Control ended cleanly
        with pytest.raises(RuntimeError):
            _ = running.bridge.local_address


async def test_reconnects_to_a_restarted_gateway_and_asks_for_the_same_address(
    certs: tuple[Path, Path],
) -> None:
    port = free_udp_port()
    first = RecordingAllocator(ISD_AS, POOLS, hold_time=600.0)
    second = RecordingAllocator(ISD_AS, POOLS, hold_time=600.0)  # knows no grant of the first
    async with udp_peer() as peer, contextlib.AsyncExitStack() as gateway:
        await gateway.enter_async_context(running_server(certs, allocator=first, port=port))
        async with bridge_to(port, certs[0]) as running:
            before = await running.connected()
            await echo_round(running, peer, b"before the restart")
            assert first.requests == ["0.0.0.0/32"]  # any address at first

            await gateway.aclose()  # the gateway goes away ...
            for _ in range(100):
                if running.bridge.connected is None:
                    break
                await asyncio.sleep(0.02)
            assert running.bridge.connected is None
            await asyncio.sleep(0.3)  # ... and a reconnect attempt or two find nobody

            async with running_server(
                certs, allocator=second, port=port
            ):  # ... and comes back on the same port
                after = await running.connected()
                await echo_round(running, peer, b"after the restart")
            assert after.assigned == before.assigned
            assert second.requests == [f"{before.assigned[0].ip}/32"]
            assert running.bridge.counters.connects == 2


async def test_refused_previous_address_falls_back_to_the_desired_one(
    certs: tuple[Path, Path],
) -> None:
    port = free_udp_port()
    first = RecordingAllocator(ISD_AS, POOLS, hold_time=600.0)
    async with udp_peer() as peer, contextlib.AsyncExitStack() as gateway:
        await gateway.enter_async_context(running_server(certs, allocator=first, port=port))
        async with bridge_to(port, certs[0]) as running:
            before = await running.connected()
            await gateway.aclose()
            # the restarted gateway gave the address to someone else meanwhile
            second = RecordingAllocator(ISD_AS, POOLS, hold_time=600.0)
            taken = ipaddress.ip_network(f"{before.assigned[0].ip}/32")
            second.allocate(ISD_AS, taken, SnapTokenClaims(uuid.uuid4(), 2**40), now=time.time())
            async with running_server(certs, allocator=second, port=port):
                after = await running.connected()
                await echo_round(running, peer, b"new address")
            assert after.assigned != before.assigned
            assert second.requests[-2:] == [str(taken), "0.0.0.0/32"]


# ---- tokens and refusals -------------------------------------------------------------------


class RotatingValidator:
    """Accepts only ``accepted`` (one identity, short sessions) and records what it saw."""

    def __init__(self, accepted: str, validity: float) -> None:
        self.accepted = accepted
        self.validity = validity
        self.seen: list[tuple[str, bool]] = []

    def validate(self, now: float, token: str) -> SnapTokenClaims:
        inner = StaticTokenValidator(self.accepted, self.validity, identity=IDENTITY)
        try:
            claims = inner.validate(now, token)
        except Exception:
            self.seen.append((token, False))
            raise
        self.seen.append((token, True))
        return claims


async def test_renewal_rereads_the_token_file(certs: tuple[Path, Path], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("OLD-TOKEN\n")
    validator = RotatingValidator("OLD-TOKEN", validity=2)
    typed: TokenValidator[Any] = validator
    async with (
        running_server(certs, validator=typed) as harness,
        bridge_to(harness.port, certs[0], TokenSource(path=token_file)) as running,
        udp_peer() as peer,
    ):
        info = await running.connected()
        assert info.valid_until is not None
        # rotate: from now on the gateway accepts only the new token
        token_file.write_text("NEW-TOKEN\n")
        validator.accepted = "NEW-TOKEN"
        rotated_at = len(validator.seen)
        # outlive the first session by more than one validity period
        await asyncio.sleep(max(info.valid_until - time.time(), 0) + 2.5)
        after = validator.seen[rotated_at:]
        assert after, "no renewal happened"
        assert all(seen == ("NEW-TOKEN", True) for seen in after), after
        assert running.bridge.counters.connects == 1  # renewed in place, never reconnected
        assert running.events.empty()
        await echo_round(running, peer, b"still up")


async def test_unreadable_token_file_is_retried_not_fatal(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    async with (
        running_server(certs) as harness,
        bridge_to(harness.port, certs[0], TokenSource(path=token_file)) as running,
    ):
        await asyncio.sleep(0.3)
        assert running.bridge.counters.connect_failures >= 1
        assert not running.task.done()
        token_file.write_text(TOKEN)
        await running.connected()


async def test_a_refused_token_is_permanent(certs: tuple[Path, Path]) -> None:
    async with (
        running_server(certs) as harness,
        bridge_to(harness.port, certs[0], TokenSource(token="WRONG")) as running,
    ):
        with pytest.raises(TunnelRefused) as refused:
            await asyncio.wait_for(running.task, 5)
    assert refused.value.http_status == 401
    assert running.events.empty()
    assert running.bridge.counters.connect_failures == 0


async def test_gives_up_after_max_reconnects(certs: tuple[Path, Path]) -> None:
    port = free_udp_port()  # nobody listens there
    started = time.monotonic()
    async with bridge_to(port, certs[0], connect_timeout=0.3, max_reconnects=2) as running:
        with pytest.raises(ReconnectsExhausted) as exhausted:
            await asyncio.wait_for(running.task, 5)
    assert exhausted.value.attempts == 2
    assert running.bridge.counters.connect_failures == 3
    assert time.monotonic() - started < 3


async def test_every_offered_datagram_is_sent_or_counted(certs: tuple[Path, Path]) -> None:
    """A tiny QUIC send queue forces send_wait; whatever cannot go is counted."""
    cert = certs[0]

    async with running_server(certs, echo=False) as harness, udp_peer() as peer:

        def tiny_queue() -> Any:
            settings = quic.QuicSettings(send_queue=1, send_batch=1)
            return quic.connect("127.0.0.1", harness.port, ca_file=cert, settings=settings)

        factory = builder_factory(TokenSource(token=TOKEN))
        bridge = TunnelBridge(tiny_queue, factory, send_wait_bound=0.05, local_queue=8)
        events: asyncio.Queue[TunnelConnected] = asyncio.Queue()
        bridge.on_connected = events.put_nowait
        task = asyncio.ensure_future(bridge.run())
        try:
            await asyncio.wait_for(events.get(), 5)
            offered = 300
            for i in range(offered):
                peer.send(i.to_bytes(4, "big") * 100, bridge.local_address)
                if i % 16 == 15:
                    # At most 16 in the kernel's socket buffer at once, however slow the
                    # loop: a loss out of sight there would not be the bridge's.
                    await _until_accounted(bridge.counters, i + 1)
            await _until_accounted(bridge.counters, offered)
        finally:
            bridge.stop()
            await asyncio.wait_for(task, 5)
        c = bridge.counters
        assert _accounted(c) == offered, c
        assert c.sent > 0


def _accounted(c: Any) -> int:
    """Local datagrams the bridge has read: sent into the tunnel or counted as dropped."""
    return int(
        c.sent
        + c.dropped_send_timeout
        + c.dropped_local_queue
        + c.dropped_offline
        + c.dropped_oversize
        + c.dropped_send_error
    )


async def _until_accounted(c: Any, count: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until the bridge has read ``count`` local datagrams."""
    deadline = asyncio.get_running_loop().time() + timeout
    while _accounted(c) < count and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - plain counters, no event
        await asyncio.sleep(0.002)
