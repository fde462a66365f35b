"""Floods of garbage and of Initials with fresh connection IDs, against a real endpoint."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path

from snaptun.aio import quic
from snaptun.core.admission import AdmissionSettings

FLOOD_SOURCE = "127.0.0.2"  # another loopback address: a source of its own


def fake_initial(size: int = 1200) -> bytes:
    """A QUIC v1 Initial header with fresh connection IDs and a payload of noise."""
    head = b"\xc3\x00\x00\x00\x01" + b"\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
    rest = size - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


def _flood_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((FLOOD_SOURCE, 0))
    sock.setblocking(False)
    return sock


async def send_flood(
    target: tuple[str, int], count: int, every_batch: Callable[[], None] = lambda: None
) -> None:
    """Send ``count`` datagrams from FLOOD_SOURCE: one in four random, the rest Initials."""
    with _flood_socket() as sock:
        for n in range(count):
            data = os.urandom(1300) if n % 4 == 0 else fake_initial()
            try:
                sock.sendto(data, target)
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if n % 16 == 0:
                await asyncio.sleep(0)  # let the endpoint read
                every_batch()


async def _flood(endpoint: quic.QuicEndpoint, count: int) -> int:
    """Flood ``endpoint``; returns the largest half-open count seen between batches."""
    most = [0]

    def look() -> None:
        most[0] = max(most[0], endpoint.gate.half_open)

    await send_flood(endpoint.local_address, count, look)
    return most[0]


async def _until(predicate: object, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_half_open_connections_stay_bounded_and_are_freed(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1",
        0,
        cert_file=cert,
        key_file=key,
        admission=AdmissionSettings(
            max_half_open=32, source_rate=1e6, source_burst=10**6, retry="never"
        ),
        handshake_timeout=0.5,
    )
    try:
        most = await _flood(endpoint, 4000)
        assert most <= 32
        assert endpoint.gate.half_open <= 32
        refused = endpoint.gate.refused
        assert refused["half_open_limit"] > 0
        assert refused["not_initial"] > 0
        # Every half-open connection is given up and forgotten within seconds.
        assert await _until(lambda: endpoint.gate.half_open == 0, 5)
        assert await _until(lambda: endpoint.known_connection_ids == 0, 10)
        assert endpoint.handshake_timeouts > 0
        # And a real client gets through afterwards.
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            assert conn.closed is None
    finally:
        endpoint.close()


async def test_a_flooding_source_is_rate_limited_while_others_connect(
    certs: tuple[Path, Path],
) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1", 0, cert_file=cert, key_file=key, handshake_timeout=0.5
    )
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        flood = asyncio.ensure_future(_flood(endpoint, 6000))
        await asyncio.sleep(0.05)
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            assert conn.closed is None  # a legitimate setup during the flood
        most = await flood
        elapsed = loop.time() - started
        defaults = AdmissionSettings()
        # What the flooder got through: its burst and its rate, plus our one client.
        allowed = defaults.source_burst + defaults.source_rate * elapsed + 1
        assert most <= allowed
        assert endpoint.gate.refused["source_rate"] > 0
        assert endpoint.gate.admitted <= allowed
        assert await _until(lambda: endpoint.known_connection_ids == 0, 10)
    finally:
        endpoint.close()


async def test_retry_keeps_a_flood_of_initials_from_making_state(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1",
        0,
        cert_file=cert,
        key_file=key,
        admission=AdmissionSettings(max_half_open=32, source_rate=1e6, source_burst=10**6),
        handshake_timeout=0.5,
    )
    try:
        most = await _flood(endpoint, 4000)
        # Auto mode: from half the bound on, Initials without a token get a Retry, no state.
        assert most <= 16 + 1
        assert endpoint.retries_sent > 0
        assert endpoint.gate.refused["half_open_limit"] == 0
        # A real client passes address validation (qh3 answers the Retry) while it is on.
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            assert conn.closed is None
    finally:
        endpoint.close()


async def test_retry_always_still_lets_clients_in(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1", 0, cert_file=cert, key_file=key, admission=AdmissionSettings(retry="always")
    )
    try:
        for _ in range(3):
            async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as c:
                assert c.closed is None
        assert endpoint.retries_sent >= 3  # a ClientHello may span two Initials: two Retries
    finally:
        endpoint.close()
