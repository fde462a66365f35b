"""TunnelBridge over a GatewayFleet: rendezvous choice, failover, back to the top, refusals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from snaptun.aio.bridge import (
    Gateway,
    GatewayFleet,
    TokenSource,
    TunnelBridge,
    TunnelConnected,
    TunnelRefused,
    builder_factory,
)
from snaptun.core.rendezvous import rendezvous_order, token_identity
from snaptun.core.tokens import StaticTokenValidator
from tests.aio.harness import TOKEN, running_server
from tests.aio.test_bridge import FAST, Running, connector, echo_round, free_udp_port, udp_peer


def name(port: int) -> str:
    return f"127.0.0.1:{port}"


def ranked(ports: list[int], token: str = TOKEN) -> tuple[int, int]:
    """(preferred, other) of two gateway ports for ``token``."""
    first, second = rendezvous_order(token_identity(token), [name(p) for p in ports])
    by_name = {name(p): p for p in ports}
    return by_name[first], by_name[second]


@contextlib.asynccontextmanager
async def fleet_bridge(
    ports: list[int], cert: Path, source: TokenSource | None = None, **kwargs: Any
) -> AsyncIterator[Running]:
    """A bridge over the gateways at ``ports``, listed in that order."""
    source = source or TokenSource(token=TOKEN)
    fleet = GatewayFleet([Gateway(name(p), connector(p, cert)) for p in ports], source.identity)
    events: asyncio.Queue[TunnelConnected] = asyncio.Queue()
    bridge = TunnelBridge(
        fleet,
        builder_factory(source),
        on_connected=events.put_nowait,
        backoff=FAST,
        **kwargs,
    )
    await bridge.open()
    task = asyncio.ensure_future(bridge.run())
    try:
        yield Running(bridge, task, events)
    finally:
        bridge.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        assert task.done()


async def test_picks_the_rendezvous_choice_fails_over_and_returns_to_it(
    certs: tuple[Path, Path],
) -> None:
    preferred, other = ranked([free_udp_port(), free_udp_port()])
    async with (
        udp_peer() as peer,
        contextlib.AsyncExitStack() as first,
        running_server(certs, port=other) as backup,
    ):
        main = await first.enter_async_context(running_server(certs, port=preferred))
        # listed with the preferred gateway last: the hash decides, not the listing
        async with fleet_bridge([other, preferred], certs[0]) as running:
            assert (await running.connected()).gateway == name(preferred)
            await main.next_tunnel()
            await echo_round(running, peer, b"via the preferred gateway")

            await first.aclose()  # the preferred gateway goes away: fail over
            assert (await running.connected()).gateway == name(other)
            await backup.next_tunnel()
            await echo_round(running, peer, b"via the other gateway")
            failures = running.bridge.counters.connect_failures
            assert failures >= 1  # the preferred one was tried first

            # it comes back; the tunnel on the other is not moved while it works ...
            async with running_server(certs, port=preferred) as again:
                await echo_round(running, peer, b"still via the other gateway")
                assert again.connections == []
                # ... but once it ends, the next round starts from the top
                backup.connections[-1].close(0, "maintenance")
                assert (await running.connected()).gateway == name(preferred)
                await again.next_tunnel()
                await echo_round(running, peer, b"back on the preferred gateway")
            assert running.bridge.counters.connects == 3


async def test_a_refusal_stops_without_trying_the_next_gateway(
    certs: tuple[Path, Path],
) -> None:
    preferred, other = ranked([free_udp_port(), free_udp_port()])
    strict = StaticTokenValidator("ANOTHER", 60)
    async with (
        running_server(certs, port=preferred, validator=strict),
        running_server(certs, port=other) as backup,
        fleet_bridge([other, preferred], certs[0]) as running,
    ):
        with pytest.raises(TunnelRefused) as refused:
            await asyncio.wait_for(running.task, 5)
        assert refused.value.http_status == 401
        assert backup.connections == []


async def test_all_unreachable_backs_off_by_rounds(certs: tuple[Path, Path]) -> None:
    ports = [free_udp_port(), free_udp_port(), free_udp_port()]  # nobody listens
    async with fleet_bridge(ports, certs[0], max_reconnects=1) as running:
        with pytest.raises(Exception, match="gave up after 1 reconnect attempts"):
            await asyncio.wait_for(running.task, 10)
        # two rounds (the first and one reconnect), each over all three gateways
        assert running.bridge.counters.connect_failures == 6


async def test_an_unreadable_token_file_is_retried_with_a_fleet(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    async with (
        running_server(certs) as first,
        running_server(certs) as second,
        fleet_bridge([first.port, second.port], certs[0], TokenSource(path=token_file)) as running,
    ):
        await asyncio.sleep(0.3)
        assert running.bridge.counters.connect_failures >= 1
        assert not running.task.done()
        token_file.write_text(TOKEN)
        preferred, _ = ranked([first.port, second.port])
        assert (await running.connected()).gateway == name(preferred)


def test_a_fleet_needs_distinct_named_gateways(certs: tuple[Path, Path]) -> None:
    connect = connector(1, certs[0])
    with pytest.raises(ValueError, match="no gateway"):
        GatewayFleet([], lambda: "x")
    with pytest.raises(ValueError, match="needs a name"):
        GatewayFleet([Gateway("a:1", connect), Gateway(None, connect)], lambda: "x")
    with pytest.raises(ValueError, match="listed twice"):
        GatewayFleet([Gateway("a:1", connect), Gateway("a:1", connect)], lambda: "x")
    single = GatewayFleet.single(connect)
    assert len(single) == 1
    assert single.order()[0].name is None
