"""Retry tokens on a real endpoint: forged ones cost nothing, real ones work only where issued."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.core.admission import AdmissionSettings


def initial(dcid: bytes, scid: bytes, token: bytes = b"", size: int = 1200) -> bytes:
    """A QUIC v1 Initial header (with ``token``) and a payload of noise."""
    n = len(token)
    length = bytes([n]) if n < 64 else bytes([0x40 | n >> 8, n & 0xFF])
    head = (
        b"\xc3\x00\x00\x00\x01"
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + length
        + token
    )
    rest = size - len(head) - 2
    return head + bytes([0x40 | rest >> 8, rest & 0xFF]) + os.urandom(rest)


def parse_retry(packet: bytes) -> tuple[bytes, bytes, bytes]:
    """(DCID, SCID, token) of a QUIC v1 Retry packet."""
    assert packet[0] & 0xF0 == 0xF0, "not a v1 Retry"
    assert packet[1:5] == b"\x00\x00\x00\x01"
    at = 5
    dcid = packet[at + 1 : at + 1 + packet[at]]
    at += 1 + packet[at]
    scid = packet[at + 1 : at + 1 + packet[at]]
    at += 1 + packet[at]
    return dcid, scid, packet[at:-16]


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Whatever reaches the event loop's exception handler during the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


def _socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def _receive(sock: socket.socket, timeout: float = 3.0) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)


async def _receive_retry(sock: socket.socket) -> bytes:
    """The next Retry, skipping other packets (a half-open connection's close)."""
    for _ in range(20):
        packet = await _receive(sock)
        if packet[0] & 0xF0 == 0xF0:
            return packet
    raise AssertionError("no Retry among 20 packets")


async def _until(predicate: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()  # type: ignore[no-any-return]


async def test_forged_tokens_are_refused_cheaply_counted_and_never_logged_per_datagram(
    certs: tuple[Path, Path],
    loop_errors: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1", 0, cert_file=cert, key_file=key, admission=AdmissionSettings(retry="always")
    )
    caplog.set_level(logging.WARNING, logger="snaptun.aio.quic")
    sent = 0
    try:
        sources = [_socket(f"127.0.0.{n}") for n in range(2, 10)]
        try:
            for n in range(2000):
                # 256-byte tokens: the size qh3's own (RSA) handler would decrypt
                forged = initial(os.urandom(8), os.urandom(8), token=os.urandom(256))
                try:
                    sources[n % len(sources)].sendto(forged, endpoint.local_address)
                    sent += 1
                except BlockingIOError:
                    pass
                if n % 8 == 0:
                    await asyncio.sleep(0.001)
        finally:
            for sock in sources:
                sock.close()
        refused = endpoint.gate.refused
        # The kernel may drop some; most arrive, and every one that did is refused.
        assert await _until(lambda: refused["bad_retry_token"] >= sent // 2, 5)
        await asyncio.sleep(0.2)
        assert endpoint.gate.admitted == 0  # refused before the gate spent source tokens
        assert endpoint.gate.half_open == 0
        assert endpoint.known_connection_ids == 0
        assert endpoint.retries_sent == 0
        assert loop_errors == []
        assert len(caplog.records) <= 2  # one summary per 10 s at most
        # A real client still gets in through Retry.
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            assert conn.closed is None
        assert endpoint.retries_sent >= 1
    finally:
        endpoint.close()


async def test_a_real_token_works_only_from_its_address_and_with_its_cid(
    certs: tuple[Path, Path], loop_errors: list[dict[str, Any]]
) -> None:
    cert, key = certs
    endpoint = await quic.listen(
        "127.0.0.1",
        0,
        cert_file=cert,
        key_file=key,
        admission=AdmissionSettings(retry="always", retry_token_lifetime=0.5),
        handshake_timeout=0.5,
    )
    target = endpoint.local_address
    client, other = _socket(), _socket()
    try:
        scid = os.urandom(8)
        client.sendto(initial(os.urandom(8), scid), target)
        dcid, rscid, token = parse_retry(await _receive_retry(client))
        assert dcid == scid
        assert endpoint.retries_sent == 1
        assert endpoint.known_connection_ids == 0  # a Retry makes no state

        refused = endpoint.gate.refused
        other.sendto(initial(rscid, scid, token), target)  # another port
        assert await _until(lambda: refused["bad_retry_token"] == 1, 3)
        client.sendto(initial(os.urandom(8), scid, token), target)  # not the Retry's CID
        assert await _until(lambda: refused["bad_retry_token"] == 2, 3)
        assert endpoint.known_connection_ids == 0

        client.sendto(initial(rscid, scid, token), target)  # as a client answers a Retry
        assert await _until(lambda: endpoint.known_connection_ids > 0, 3)
        assert endpoint.gate.half_open == 1
        # Its payload is noise, so the handshake never completes: it is freed.
        assert await _until(lambda: endpoint.known_connection_ids == 0, 10)
        assert endpoint.gate.half_open == 0

        # A token older than its lifetime is refused.
        client.sendto(initial(os.urandom(8), scid), target)
        _, rscid, token = parse_retry(await _receive_retry(client))
        await asyncio.sleep(0.7)
        client.sendto(initial(rscid, scid, token), target)
        assert await _until(lambda: refused["bad_retry_token"] == 3, 3)
        assert endpoint.known_connection_ids == 0
        assert loop_errors == []
    finally:
        client.close()
        other.close()
        endpoint.close()
