"""An idle tunnel holds no helper task, timer handle or handshake state of its own.

docs/BENCHMARKS.md ("Where an idle tunnel's memory goes") has the figures.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from qh3.quic.tls_bridge import QuicTlsBridge, QuicTlsBridgeError

from snaptun.aio import quic
from snaptun.aio.client import ClientBuilder
from snaptun.aio.timers import loop_timers
from tests.aio.harness import TOKEN, running_server

IDLE_HELPERS = {"QuicConnection.accept_stream", "Event.wait", "wait"}
"""What Control.run used to keep in a task (or an asyncio.wait) per idle tunnel."""


async def test_an_idle_tunnel_keeps_no_helper_task_and_shares_the_loop_timer(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs) as harness, harness.connect() as client:
        await ClientBuilder(TOKEN).connect(client)
        await harness.next_tunnel()
        await asyncio.sleep(0.2)  # the setup's request tasks finish
        running = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
        assert not IDLE_HELPERS.intersection(running), running
        # every connection's keep-alive sits in the loop's one wheel
        timers = loop_timers()
        for conn in [client, *harness.connections]:
            assert conn._send_keepalive in timers._wheel
        assert timers.scheduled


async def test_a_server_connection_drops_its_handshake_state_and_still_carries_the_tunnel(
    certs: tuple[Path, Path],
) -> None:
    async with running_server(certs, echo=True) as harness, harness.connect() as client:
        sender, receiver, _ = await ClientBuilder(TOKEN).connect(client)  # streams, after it
        await harness.next_tunnel()
        (server_side,) = harness.connections
        assert not isinstance(server_side._quic._tls, QuicTlsBridge)
        assert server_side._quic._applied_transport_parameters is None
        assert isinstance(client._quic._tls, QuicTlsBridge)  # a client may get session tickets
        assert server_side._datagrams_out is None  # queues are made on first use
        await sender.send_wait(b"ping")  # the tunnel works after the release
        assert await asyncio.wait_for(receiver.receive(), 5) == b"ping"
        assert server_side._datagrams_out is not None


def test_a_tls_message_after_the_handshake_is_a_connection_error() -> None:
    with pytest.raises(QuicTlsBridgeError) as caught:
        quic._TLS_DONE.receive_crypto(3, b"\x04\x00\x00\x00", 0, version=1)
    assert caught.value.error_code == 0x10A  # CRYPTO_ERROR + unexpected_message, as qh3 would
