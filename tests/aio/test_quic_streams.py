"""Stream ids in the QUIC binding: a reset stream stays gone, each open gets its own id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from snaptun.aio import quic
from snaptun.errors import ConnectionLost


@asynccontextmanager
async def pair(certs: tuple[Path, Path]) -> AsyncIterator[tuple[quic.QuicConnection, ...]]:
    """A connected (client, server) pair on loopback."""
    cert, key = certs
    endpoint = await quic.listen("127.0.0.1", 0, cert_file=cert, key_file=key)
    try:
        async with quic.connect("127.0.0.1", endpoint.local_address[1], ca_file=cert) as client:
            server = await asyncio.wait_for(endpoint.accept(), 3)
            yield client, server
    finally:
        endpoint.close()


@pytest.mark.parametrize("opener", ["client", "server"])
async def test_late_bytes_on_a_reset_stream_are_dropped_not_a_new_stream(
    certs: tuple[Path, Path], opener: str
) -> None:
    async with pair(certs) as (client, server):
        writer, reader = (client, server) if opener == "client" else (server, client)
        mine = writer.open_stream()
        mine.write(b"request")
        theirs = await asyncio.wait_for(reader.accept_stream(), 3)
        assert await theirs.read() == b"request"
        theirs.reset(0)
        mine.write(b"late")  # before the reset reaches the writer: it is on the wire
        # The writer is told, with the binding's error, not qh3's bare ValueError.
        with pytest.raises(quic.QuicStreamReset):
            await asyncio.wait_for(mine.read(), 3)
        with pytest.raises(quic.QuicStreamReset):
            mine.write(b"later")
        # The late bytes arrived before this stream: the next stream accepted is it,
        # the old id never surfaces again, and the connection lives.
        fresh = writer.open_stream()
        fresh.write(b"next", end_stream=True)
        got = await asyncio.wait_for(reader.accept_stream(), 3)
        assert got.stream_id == fresh.stream_id
        assert await got.read() == b"next"
        assert reader.late_stream_frames == 1
        assert reader.closed is None
        assert writer.closed is None


async def test_streams_written_out_of_order_all_arrive(certs: tuple[Path, Path]) -> None:
    """Skipped lower ids are opened implicitly by the later one: each is new once."""
    async with pair(certs) as (client, server):
        streams = [client.open_stream() for _ in range(3)]
        for stream in reversed(streams):
            stream.write(b"%d" % stream.stream_id, end_stream=True)
        got = [await asyncio.wait_for(server.accept_stream(), 3) for _ in streams]
        assert sorted(s.stream_id for s in got) == [s.stream_id for s in streams]
        for stream in got:
            assert await stream.read() == b"%d" % stream.stream_id
        assert server.late_stream_frames == 0


async def test_each_open_stream_gets_its_own_id(certs: tuple[Path, Path]) -> None:
    async with pair(certs) as (client, server):
        first, second = client.open_stream(), client.open_stream()
        assert first.stream_id != second.stream_id
        second.write(b"two", end_stream=True)
        first.write(b"one", end_stream=True)
        got = {}
        for _ in range(2):
            stream = await asyncio.wait_for(server.accept_stream(), 3)
            got[stream.stream_id] = await stream.read()
        assert got == {first.stream_id: b"one", second.stream_id: b"two"}


async def test_every_pending_read_ends_when_the_connection_closes(
    certs: tuple[Path, Path],
) -> None:
    async with pair(certs) as (client, server):
        streams = [client.open_stream() for _ in range(2)]  # neither written to
        reads = [asyncio.ensure_future(s.read()) for s in streams]
        await asyncio.sleep(0.05)
        assert not any(r.done() for r in reads)
        server.close(0, "bye")
        for read in reads:
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(read, 3)
