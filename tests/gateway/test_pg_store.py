"""The shared grant store against a real PostgreSQL: the database decides, not the gateways."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest

from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager, Grant, GrantChange, GrantState
from snaptun.core.state import StoreFailure
from snaptun.gateway.pg_store import Moved, PgGrantStore, PgGrantWriter
from snaptun.gateway.store import GrantStoreError

IA = IsdAs.parse("1-ff00:0:110")
A_POOL = ipaddress.ip_network("10.1.0.0/24")
B_POOL = ipaddress.ip_network("10.2.0.0/24")


def active(identity: str, address: str) -> Grant:
    return Grant(identity, ipaddress.ip_address(address), GrantState.ACTIVE)


def held(identity: str, address: str, until: float) -> Grant:
    return Grant(identity, ipaddress.ip_address(address), GrantState.HELD, until)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[PgGrantStore]]:
    """Three gateways' stores on one database."""
    opened = [await PgGrantStore.open(pg_url, name) for name in ("gw-a", "gw-b", "gw-c")]
    yield opened
    for store in opened:
        await store.close()


async def rows(store: PgGrantStore) -> list[Grant]:
    return await store.load([ipaddress.ip_network("0.0.0.0/0")])


async def test_an_address_is_granted_once_and_an_identity_moves_between_gateways(
    stores: list[PgGrantStore],
) -> None:
    a, b, _ = stores
    await a.grant(active("x", "10.1.0.5"), now=100.0)
    with pytest.raises(GrantStoreError, match="another identity"):
        await b.grant(active("y", "10.1.0.5"), now=100.0)
    # X on B: its row moves (one grant fleet-wide) and 10.1.0.5 is free again.
    await b.grant(active("x", "10.2.0.7"), now=101.0)
    await a.grant(active("y", "10.1.0.5"), now=101.0)
    assert await rows(a) == [active("x", "10.2.0.7"), active("y", "10.1.0.5")]
    # A's late hold of X must not undo the move.
    await a.hold(held("x", "10.1.0.5", 700.0))
    assert (await rows(a))[0] == active("x", "10.2.0.7")


async def test_a_hold_keeps_the_address_until_it_ends(stores: list[PgGrantStore]) -> None:
    a, b, _ = stores
    await a.grant(active("x", "10.1.0.5"), now=100.0)
    await a.hold(held("x", "10.1.0.5", 160.0))
    with pytest.raises(GrantStoreError):
        await b.grant(active("y", "10.1.0.5"), now=150.0)  # held for X
    await b.grant(active("y", "10.1.0.5"), now=161.0)  # the hold ended: the row goes
    assert await rows(b) == [active("y", "10.1.0.5")]
    await b.hold(held("y", "10.1.0.5", 200.0))
    assert await a.sweep(now=199.0) == 0
    assert await a.sweep(now=201.0) == 1
    assert await rows(a) == []


async def test_concurrent_grants_leave_one_grant_per_identity_and_address(
    stores: list[PgGrantStore],
) -> None:
    # One identity from 30 clients over three gateways, each with its own address.
    tries = [
        stores[i % 3].grant(active("x", f"10.{i % 3 + 1}.0.{i + 2}"), now=1.0) for i in range(30)
    ]
    await asyncio.gather(*tries)
    mine = [g for g in await rows(stores[0]) if g.identity == "x"]
    assert len(mine) == 1
    # 30 identities racing for one address: exactly one wins.
    racing = [stores[i % 3].grant(active(f"id{i}", "10.3.0.9"), now=1.0) for i in range(30)]
    results = await asyncio.gather(*racing, return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, GrantStoreError | int) for r in results)
    assert [g.address for g in await rows(stores[0])].count(ipaddress.ip_address("10.3.0.9")) == 1


async def test_the_gateway_that_lost_a_grant_is_notified(stores: list[PgGrantStore]) -> None:
    a, b, c = stores
    seen: list[Moved] = []
    connected, two = asyncio.Event(), asyncio.Event()

    def on_moved(moved: Moved) -> None:
        seen.append(moved)
        if len(seen) == 2:
            two.set()

    async def on_connected() -> None:
        connected.set()

    listener = asyncio.ensure_future(a.listen(on_moved, on_connected))
    try:
        await asyncio.wait_for(connected.wait(), 5)
        await a.grant(active("x", "10.1.0.5"), now=1.0)
        await b.grant(active("x", "10.2.0.5"), now=2.0)
        await c.grant(active("x", "10.3.0.5"), now=3.0)
        await asyncio.wait_for(two.wait(), 5)
        assert [(m.identity, m.old, m.new) for m in seen] == [
            ("x", "gw-a", "gw-b"),
            ("x", "gw-b", "gw-c"),
        ]
        assert seen[0].generation < seen[1].generation
        # The same gateway granting again is no move.
        await c.grant(active("x", "10.3.0.6"), now=4.0)
        await asyncio.sleep(0.2)
        assert len(seen) == 2
        # After a reconnection, the moves of local grants are found by a query.
        assert [m.new for m in await a.moved_away(["x", "nobody"])] == ["gw-c"]
    finally:
        listener.cancel()


async def test_the_writer_drops_a_moved_grant_unless_its_own_is_newer(
    stores: list[PgGrantStore],
) -> None:
    a, b, _ = stores
    manager = AddressManager(IA, [A_POOL], clock=lambda: 10.0)
    writer = PgGrantWriter(a, manager, lambda: 10.0)
    allocation, change = manager.grant(10.0, IA, ipaddress.ip_network("0.0.0.0/32"), _Claims("x"))
    assert change is not None
    result = writer(change)
    assert not isinstance(result, bool | StoreFailure)
    assert await result is True
    gen = (await a.moved_away(["x"])) or None
    assert gen is None  # X is A's
    assert not writer.moved(Moved("x", "gw-a", "gw-b", generation=0))  # older than ours
    assert manager.grant_of("x") is not None
    assert not writer.moved(Moved("y", "gw-c", "gw-b", generation=99))  # not ours
    await b.grant(active("x", "10.2.0.5"), now=11.0)
    (moved,) = await writer.missed()
    assert writer.moved(moved)
    assert manager.grant_of("x") is None
    # A hold is written behind the answer; the row is B's, so nothing changes.
    hold = GrantChange("x", None, held("x", str(allocation.address.ip), 20.0))
    assert writer(hold) is True
    await writer.drain()
    assert (await rows(a))[0] == active("x", "10.2.0.5")


async def test_a_grant_refused_by_the_store_or_without_a_store(
    stores: list[PgGrantStore], pg_url: str
) -> None:
    a, b, _ = stores
    await b.grant(active("y", "10.1.0.5"), now=1.0)
    manager = AddressManager(IA, [A_POOL], clock=lambda: 10.0)
    unavailable: list[int] = []
    writer = PgGrantWriter(a, manager, lambda: 10.0, on_unavailable=lambda: unavailable.append(1))
    change = GrantChange("x", None, active("x", "10.1.0.5"))
    assert await writer._grant(change.after) is False  # type: ignore[arg-type]
    closed = await PgGrantStore.open(pg_url, "gw-d", timeout=0.3)
    await closed.close()
    lost = PgGrantWriter(closed, manager, lambda: 10.0, timeout=0.3)
    lost._on_unavailable = lambda: unavailable.append(1)
    assert await lost._grant(active("x", "10.1.0.6")) is StoreFailure.UNAVAILABLE
    assert unavailable == [1]


async def test_open_fails_clearly_without_a_server(tmp_path: object) -> None:
    with pytest.raises(GrantStoreError, match="open failed"):
        await PgGrantStore.open(f"postgresql:///x?host={tmp_path}&user=nobody", "g", timeout=0.2)


class _Claims:
    """The least a token needs for the allocator: an identity."""

    def __init__(self, identity: str) -> None:
        self._identity = identity

    def id(self) -> str:
        return self._identity

    def exp_time(self) -> float:
        return 1e12
