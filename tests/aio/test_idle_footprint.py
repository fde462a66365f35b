"""An idle tunnel holds no helper task and no timer handle of its own (docs/BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
