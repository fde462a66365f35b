"""The server socket's I/O paths: batched (recvmmsg/GRO, GSO) and plain; the datagram sink."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio import quic
from snaptun.errors import ConnectionLost


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "plain"])
async def test_both_socket_paths_carry_a_burst_both_ways_in_order(
    certs: tuple[Path, Path], batched: bool
) -> None:
    cert, key = certs
    settings = quic.QuicSettings(batched_io=batched)
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key, settings=settings)
    try:
        transport = endpoint._server._transport  # type: ignore[union-attr]
        assert hasattr(transport, "sendto_many") is batched  # the path asked for is the one used
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            server_side = await endpoint.accept()
            echoed: list[bytes] = []
            bursts: list[int] = []

            def echo(datagrams: list[bytes]) -> None:
                bursts.append(len(datagrams))
                assert server_side.send_datagrams(datagrams)  # all or none: here all

            server_side.set_datagram_sink(echo)
            for i in range(200):  # several GSO/GRO batches of full-size packets
                await conn.send_datagram_wait(i.to_bytes(2, "big") + bytes(1200))
            async with asyncio.timeout(5):
                while len(echoed) < 200:
                    echoed.append(await conn.receive_datagram())
            assert [int.from_bytes(d[:2], "big") for d in echoed] == list(range(200))
            assert sum(bursts) == 200
            # A batch read hands its datagrams over together; a plain read has one packet.
            assert (max(bursts) > 1) is batched
    finally:
        endpoint.close()


async def test_sink_gets_queued_datagrams_first_then_live_ones_and_can_be_removed(
    certs: tuple[Path, Path],
) -> None:
    cert, key = certs
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
    try:
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            server_side = await endpoint.accept()
            await conn.send_datagram_wait(b"queued")
            assert await asyncio.wait_for(server_side.receive_datagram(), 2) == b"queued"
            await conn.send_datagram_wait(b"waiting")
            async with asyncio.timeout(2):
                while not server_side._datagrams_in:  # noqa: ASYNC110 (no event to wait on)
                    await asyncio.sleep(0.01)
            got: list[bytes] = []
            live = asyncio.Event()

            def sink(datagrams: list[bytes]) -> None:
                assert datagrams  # never an empty list
                got.extend(datagrams)
                if b"live" in datagrams:
                    live.set()

            server_side.set_datagram_sink(sink)
            assert got == [b"waiting"]  # handed over at once, in order
            await conn.send_datagram_wait(b"live")
            await asyncio.wait_for(live.wait(), 2)
            server_side.set_datagram_sink(None)
            await conn.send_datagram_wait(b"back to receive")
            assert await asyncio.wait_for(server_side.receive_datagram(), 2) == b"back to receive"
            assert got == [b"waiting", b"live"]
    finally:
        endpoint.close()


async def test_send_datagrams_queues_all_or_none(certs: tuple[Path, Path]) -> None:
    cert, key = certs
    settings = quic.QuicSettings(send_queue=4)
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key, settings=settings)
    try:
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as conn:
            server_side = await endpoint.accept()
            limit = server_side.max_datagram_size
            assert limit is not None
            assert not server_side.send_datagrams([b"x"] * 5)  # no room for all five
            assert not server_side.send_datagrams([b"x", bytes(limit + 1)])  # one too large
            assert server_side.send_queue_depth == 0
            assert server_side.send_datagrams([b"%d" % i for i in range(4)])
            assert server_side.send_queue_depth == 4
            got = [await asyncio.wait_for(conn.receive_datagram(), 5) for _ in range(4)]
            assert got == [b"0", b"1", b"2", b"3"]
            server_side.close()
            with pytest.raises(ConnectionLost):
                server_side.send_datagrams([b"late"])
    finally:
        endpoint.close()


def test_server_socket_gets_the_asked_kernel_buffer_or_the_system_limit() -> None:
    sock = quic._server_socket("127.0.0.1", 0, 1 << 20)
    try:
        assert sock.getblocking() is False
        # Linux reports twice the size set; without CAP_NET_ADMIN it caps at rmem_max.
        limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert got >= min(2 << 20, 2 * limit)
    finally:
        sock.close()


def test_server_socket_refuses_a_negative_buffer_setting() -> None:
    with pytest.raises(ValueError, match="socket_buffer"):
        quic.QuicSettings(socket_buffer=-1)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.calls.append(("one", [data]))

    def datagrams_received(self, data: list[bytes], addr: Any) -> None:
        self.calls.append(("many", list(data)))


def test_a_batch_goes_to_each_connection_in_runs_and_unknown_ids_through_the_gate() -> None:
    """The batch entry point keeps order, groups runs per connection, gates new IDs."""
    server = quic._GuardedServer.__new__(quic._GuardedServer)
    a, b = _Recorder(), _Recorder()
    server._protocols = {b"A" * 8: a, b"B" * 8: b}  # type: ignore[dict-item]
    server._cid_length = 8
    gated: list[bytes] = []
    server.datagram_received = lambda data, addr: gated.append(data)  # type: ignore[method-assign,assignment]

    def short(cid: bytes, n: int) -> bytes:
        return b"\x40" + cid + bytes([n]) * 30

    batch = [
        short(b"A" * 8, 1),
        short(b"A" * 8, 2),
        short(b"B" * 8, 3),
        short(b"X" * 8, 4),
        short(b"A" * 8, 5),
    ]
    server.datagrams_received(batch, ("127.0.0.1", 1))
    assert a.calls == [("many", batch[:2]), ("one", [batch[4]])]
    assert b.calls == [("one", [batch[2]])]
    assert gated == [batch[3]]
