"""Tests of snaptun.core.allocator: grants by identity, holds, wildcards, with a fake clock."""

from __future__ import annotations

import ipaddress
import random
import time
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from snaptun.core.addressing import EndhostAddress, IPAddress, IPNetwork, IsdAs
from snaptun.core.allocator import (
    DEFAULT_HOLD_TIME,
    AddressAllocationId,
    AddressAllocator,
    AddressManager,
    Grant,
    GrantState,
)
from snaptun.core.tokens import SnapTokenClaims
from snaptun.errors import (
    AddressAllocationError,
    AddressUnavailable,
    NoAddressesAvailable,
    UnsupportedIsdAs,
)

OWN = IsdAs.parse("1-ff00:0:110")
HOLD = 600.0
ANY4 = ipaddress.ip_network("0.0.0.0/32")
ANY6 = ipaddress.ip_network("::/128")
V4_24 = ipaddress.ip_network("192.168.0.0/24")
V6_64 = ipaddress.ip_network("2001:db8::/64")


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StuckRandom(random.Random):
    """Always picks the first index: forces the fallback walk."""

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return 0 if stop is None else start


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def host(text: str) -> IPNetwork:
    return ipaddress.ip_network(ipaddress.ip_address(text))


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def claims(n: int) -> SnapTokenClaims:
    return SnapTokenClaims(uuid.UUID(int=n), 2_000_000_000)


def alloc_id(n: int) -> AddressAllocationId:
    return AddressAllocationId(OWN, claims(n).id())


def manager(
    prefixes: list[IPNetwork] | None = None,
    clock: FakeClock | None = None,
    rng: random.Random | None = None,
) -> AddressManager:
    return AddressManager(
        OWN,
        [V4_24, V6_64] if prefixes is None else prefixes,
        hold_time=HOLD,
        clock=clock or FakeClock(),
        rng=rng or random.Random(1),
    )


# --- granting ----------------------------------------------------------------------------


def test_any_address_of_each_family() -> None:
    m = manager()
    v4 = m.allocate(OWN, ANY4, claims(1))
    assert v4.address.isd_as == OWN
    assert v4.address.ip in V4_24
    assert v4.address.ip not in (V4_24.network_address, V4_24.broadcast_address)
    assert v4.id == AddressAllocationId(OWN, str(uuid.UUID(int=1)))
    v6 = m.allocate(OWN, ANY6, claims(2))
    assert v6.address.ip in V6_64
    assert v6.address.ip != V6_64.network_address
    assert m.free_count(4) == 253
    assert m.free_count(6) == 2**64 - 2


@pytest.mark.parametrize("asked", ["0-0", "1-0", "0-ff00:0:110", "1-ff00:0:110"])
def test_wildcard_isd_as_is_completed(asked: str) -> None:
    m = manager()
    got = m.allocate(IsdAs.parse(asked), ANY4, claims(1))
    assert got.address.isd_as == OWN
    assert got.id.isd_as == OWN
    assert not got.address.isd_as.is_wildcard


@pytest.mark.parametrize("asked", ["2-0", "0-ff00:0:111", "1-ff00:0:111", "2-ff00:0:110"])
def test_other_isd_as_is_unsupported(asked: str) -> None:
    m = manager()
    with pytest.raises(UnsupportedIsdAs):
        m.allocate(IsdAs.parse(asked), ANY4, claims(1))
    assert m.grants() == []


def test_specific_address() -> None:
    m = manager()
    got = m.allocate(OWN, host("192.168.0.7"), claims(1))
    assert got.address == EndhostAddress(OWN, ip("192.168.0.7"))
    got6 = m.allocate(OWN, host("2001:db8::7"), claims(2))
    assert got6.address.ip == ip("2001:db8::7")


def test_same_identity_gets_same_address_again() -> None:
    m = manager()
    first = m.allocate(OWN, ANY4, claims(1))
    assert m.allocate(OWN, ANY4, claims(1)) == first
    assert m.allocate(IsdAs(0, 0), ANY4, claims(1)) == first
    assert m.allocate(OWN, host(str(first.address.ip)), claims(1)) == first
    assert m.free_count(4) == 253


def test_any_of_other_family_replaces_grant() -> None:
    m = manager()
    m.allocate(OWN, ANY4, claims(1))
    v6 = m.allocate(OWN, ANY6, claims(1))
    assert m.free_count(4) == 254
    assert [g.address for g in m.grants()] == [v6.address.ip]


def test_different_specific_address_frees_old() -> None:
    m = manager()
    m.allocate(OWN, host("192.168.0.1"), claims(1))
    m.allocate(OWN, host("192.168.0.2"), claims(1))
    assert m.free_count(4) == 253
    # The old address is free for someone else now.
    assert m.allocate(OWN, host("192.168.0.1"), claims(2)).address.ip == ip("192.168.0.1")


def test_failed_request_keeps_old_grant() -> None:
    m = manager()
    m.allocate(OWN, host("192.168.0.1"), claims(1))
    m.allocate(OWN, host("192.168.0.2"), claims(2))
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("192.168.0.2"), claims(1))
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("10.0.0.1"), claims(1))
    assert {g.identity: g.address for g in m.grants()} == {
        claims(1).id(): ip("192.168.0.1"),
        claims(2).id(): ip("192.168.0.2"),
    }
    only_v4 = manager([V4_24])
    only_v4.allocate(OWN, ANY4, claims(1))
    with pytest.raises(NoAddressesAvailable):
        only_v4.allocate(OWN, ANY6, claims(1))
    assert len(only_v4.grants()) == 1


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",  # outside the pools
        "192.168.1.1",
        "192.168.0.0",  # network address of the /24
        "192.168.0.255",  # broadcast address of the /24
        "2001:db8::",  # subnet-router anycast address of the /64
        "2001:db8:0:1::1",
    ],
)
def test_address_outside_pools_is_unavailable(address: str) -> None:
    with pytest.raises(AddressUnavailable):
        manager().allocate(OWN, host(address), claims(1))


@pytest.mark.parametrize("prefix", ["192.168.0.0/24", "192.168.0.4/30", "2001:db8::/120"])
def test_non_host_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(AddressUnavailable, match="host"):
        manager().allocate(OWN, net(prefix), claims(1))


def test_address_of_another_identity_is_unavailable() -> None:
    m = manager()
    m.allocate(OWN, host("192.168.0.9"), claims(1))
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("192.168.0.9"), claims(2))
    assert m.put_on_hold(alloc_id(1))
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("192.168.0.9"), claims(2))


def test_no_pool_of_family() -> None:
    m = manager([V4_24])
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY6, claims(1))
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("2001:db8::1"), claims(1))
    assert m.free_count(6) == 0
    empty = manager([])
    with pytest.raises(NoAddressesAvailable):
        empty.allocate(OWN, ANY4, claims(1))


def test_pool_exhausted() -> None:
    m = manager([net("10.0.0.0/30")])  # two usable addresses
    got = {m.allocate(OWN, ANY4, claims(n)).address.ip for n in (1, 2)}
    assert got == {ip("10.0.0.1"), ip("10.0.0.2")}
    assert m.free_count(4) == 0
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY4, claims(3))
    m.put_on_hold(alloc_id(1))
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY4, claims(3))
    assert m.deallocate(alloc_id(2))
    assert m.allocate(OWN, ANY4, claims(3)).address.ip in got


@pytest.mark.parametrize(
    ("prefix", "usable"),
    [
        ("10.0.0.0/30", ["10.0.0.1", "10.0.0.2"]),
        ("10.0.0.0/31", ["10.0.0.0", "10.0.0.1"]),
        ("10.0.0.5/32", ["10.0.0.5"]),
        ("2001:db8::/126", ["2001:db8::1", "2001:db8::2", "2001:db8::3"]),
        ("2001:db8::/127", ["2001:db8::", "2001:db8::1"]),
        ("2001:db8::5/128", ["2001:db8::5"]),
    ],
)
def test_usable_addresses_of_small_prefixes(prefix: str, usable: list[str]) -> None:
    m = manager([net(prefix)])
    version = net(prefix).version
    any_host = ANY4 if version == 4 else ANY6
    assert m.free_count(version) == len(usable)
    got = {m.allocate(OWN, any_host, claims(n)).address.ip for n in range(len(usable))}
    assert got == {ip(a) for a in usable}
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, any_host, claims(99))


def test_several_prefixes_per_family() -> None:
    m = manager([net("10.0.0.0/30"), net("10.0.1.8/31"), net("10.0.2.1/32")])
    assert m.free_count(4) == 5
    got = {m.allocate(OWN, ANY4, claims(n)).address.ip for n in range(5)}
    assert got == {ip(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.1.8", "10.0.1.9", "10.0.2.1")}
    fresh = manager([net("10.0.0.0/30"), net("10.0.1.8/31")])
    assert fresh.allocate(OWN, host("10.0.1.9"), claims(1)).address.ip == ip("10.0.1.9")
    with pytest.raises(AddressUnavailable):
        fresh.allocate(OWN, host("10.0.1.10"), claims(1))


# --- holds ---------------------------------------------------------------------------------


def test_hold_returns_address_to_same_identity() -> None:
    clock = FakeClock()
    m = manager(clock=clock)
    first = m.allocate(OWN, ANY4, claims(1))
    assert m.put_on_hold(first.id)
    [grant] = m.grants()
    assert grant.state is GrantState.HELD
    assert grant.hold_until == clock.now + HOLD
    clock.advance(HOLD - 1)
    assert m.allocate(OWN, ANY4, claims(1)) == first
    assert m.grants()[0].state is GrantState.ACTIVE
    # Reactivated: a later hold starts again from then.
    assert m.put_on_hold(first.id)
    clock.advance(HOLD - 1)
    assert m.allocate(OWN, host(str(first.address.ip)), claims(1)) == first


def test_put_on_hold_only_active_grants() -> None:
    m = manager()
    assert not m.put_on_hold(alloc_id(1))
    got = m.allocate(OWN, ANY4, claims(1))
    assert m.put_on_hold(got.id)
    assert not m.put_on_hold(got.id)  # already held
    assert not m.put_on_hold(AddressAllocationId(IsdAs.parse("1-ff00:0:111"), got.id.id))
    assert not m.deallocate(AddressAllocationId(IsdAs.parse("2-0"), got.id.id))


def test_ids_with_wildcard_isd_as_are_accepted() -> None:
    # The reference hands out ids carrying the requested (wildcard) ISD-AS.
    m = manager()
    got = m.allocate(IsdAs(0, 0), ANY4, claims(1))
    assert m.put_on_hold(AddressAllocationId(IsdAs(0, 0), got.id.id))
    assert m.deallocate(AddressAllocationId(IsdAs(1, 0), got.id.id))


def test_hold_expires_after_hold_time() -> None:
    clock = FakeClock()
    m = manager([net("10.0.0.0/30")], clock=clock)
    first = m.allocate(OWN, host("10.0.0.1"), claims(1))
    m.put_on_hold(first.id)
    clock.advance(HOLD)  # still held exactly at hold_until
    with pytest.raises(AddressUnavailable):
        m.allocate(OWN, host("10.0.0.1"), claims(2))
    assert m.free_count(4) == 1
    clock.advance(0.001)
    assert m.free_count(4) == 2
    assert m.grants() == []
    assert m.allocate(OWN, host("10.0.0.1"), claims(2)).address.ip == ip("10.0.0.1")
    # The first identity no longer has it; "any" gives it another address.
    assert m.allocate(OWN, ANY4, claims(1)).address.ip == ip("10.0.0.2")


def test_expired_hold_frees_lazily_on_any_call() -> None:
    clock = FakeClock()
    m = manager([net("10.0.0.0/30")], clock=clock)
    a = m.allocate(OWN, ANY4, claims(1))
    m.put_on_hold(a.id)
    clock.advance(HOLD + 1)
    assert not m.put_on_hold(a.id)  # the expiry ran first
    assert not m.deallocate(a.id)


def test_deallocate_frees_at_once() -> None:
    m = manager([net("10.0.0.0/30")])
    a = m.allocate(OWN, host("10.0.0.1"), claims(1))
    assert m.deallocate(a.id)
    assert not m.deallocate(a.id)
    assert m.free_count(4) == 2
    assert m.allocate(OWN, host("10.0.0.1"), claims(2)).address.ip == ip("10.0.0.1")
    # Deallocating a held grant frees it too.
    assert m.put_on_hold(alloc_id(2))
    assert m.deallocate(alloc_id(2))
    assert m.free_count(4) == 2


def test_zero_hold_time() -> None:
    clock = FakeClock()
    m = AddressManager(OWN, [V4_24], hold_time=0, clock=clock, rng=random.Random(0))
    a = m.allocate(OWN, ANY4, claims(1))
    assert m.put_on_hold(a.id)
    clock.advance(0.001)
    assert m.grants() == []


def test_default_hold_time() -> None:
    m = AddressManager(OWN, [V4_24])
    assert m.hold_time == DEFAULT_HOLD_TIME == 600.0
    assert m.allocate(OWN, ANY4, claims(1), now=1.0).address.ip in V4_24


# --- time passed in, randomness injected ------------------------------------------------------


def test_without_a_clock_every_call_needs_now() -> None:
    m = AddressManager(OWN, [V4_24], hold_time=HOLD)
    with pytest.raises(TypeError, match="no clock"):
        m.allocate(OWN, ANY4, claims(1))
    with pytest.raises(TypeError, match="no clock"):
        m.now()
    m.allocate(OWN, ANY4, claims(1), now=100.0)
    assert m.put_on_hold(alloc_id(1), now=100.0)
    assert m.grant_of(claims(1).id(), now=100.0 + HOLD) is not None  # the hold lasts to its end
    assert m.grant_of(claims(1).id(), now=100.0 + HOLD + 0.5) is None  # and ends after it
    assert m.free_count(4, now=200.0 + HOLD) == 254


def test_explicit_now_wins_over_the_clock() -> None:
    clock = FakeClock(1000.0)
    m = manager(clock=clock)
    m.allocate(OWN, ANY4, claims(1))
    assert m.put_on_hold(alloc_id(1), now=5000.0)
    held = m.grant_of(claims(1).id())
    assert held is not None
    assert held.hold_until == 5000.0 + HOLD


def test_without_an_rng_any_is_the_lowest_free_address() -> None:
    m = AddressManager(OWN, [V4_24], reserved=[ip("192.168.0.1")])
    got = [m.allocate(OWN, ANY4, claims(n), now=1.0).address.ip for n in range(3)]
    assert got == [ip("192.168.0.2"), ip("192.168.0.3"), ip("192.168.0.4")]


# --- changes returned for the caller to persist ------------------------------------------------


def test_grant_returns_the_change_and_none_when_nothing_changed() -> None:
    m = manager()
    allocation, change = m.grant(10.0, OWN, ANY4, claims(1))
    assert change is not None
    assert change.identity == claims(1).id()
    assert change.before is None
    assert change.after == Grant(claims(1).id(), allocation.address.ip, GrantState.ACTIVE)
    again, unchanged = m.grant(11.0, OWN, ANY4, claims(1))
    assert again == allocation
    assert unchanged is None  # the same active grant: nothing to write


def test_hold_returns_the_change() -> None:
    m = manager()
    allocation, _ = m.grant(10.0, OWN, ANY4, claims(1))
    change = m.hold(20.0, allocation.id)
    assert change is not None
    assert change.before is not None
    assert change.before.state is GrantState.ACTIVE
    assert change.after == Grant(
        claims(1).id(), allocation.address.ip, GrantState.HELD, 20.0 + HOLD
    )
    assert m.hold(21.0, allocation.id) is None  # already held


@pytest.mark.parametrize("start", ["none", "held", "active-elsewhere"])
def test_revert_puts_the_previous_grant_back(start: str) -> None:
    m = manager()
    identity = claims(1).id()
    if start != "none":
        first, _ = m.grant(10.0, OWN, host("192.168.0.7"), claims(1))
        if start == "held":
            m.hold(10.0, first.id)
    before = m.grant_of(identity, now=12.0)
    free = m.free_count(4, now=12.0)
    _, change = m.grant(12.0, OWN, host("192.168.0.9"), claims(1))
    assert change is not None
    assert change.before == before
    m.revert(change)
    assert m.grant_of(identity, now=12.0) == before
    assert m.free_count(4, now=12.0) == free
    # The address the failed write would have granted is free again for anyone.
    assert m.allocate(OWN, host("192.168.0.9"), claims(2), now=12.0).address.ip == ip("192.168.0.9")
    if start == "held":  # the restored hold still ends when it did
        assert m.grant_of(identity, now=10.0 + HOLD + 1) is None


def test_revert_refuses_an_address_taken_meanwhile() -> None:
    m = manager()
    m.grant(10.0, OWN, host("192.168.0.7"), claims(1))
    _, change = m.grant(10.0, OWN, host("192.168.0.9"), claims(1))
    assert change is not None
    m.allocate(OWN, host("192.168.0.7"), claims(2), now=10.0)
    with pytest.raises(ValueError, match="another identity"):
        m.revert(change)
    assert m.grant_of(claims(1).id(), now=10.0) == change.after  # unchanged


# --- random choice --------------------------------------------------------------------------


def test_random_choice_in_huge_pool_is_fast() -> None:
    m = manager([net("2001:db8::/32")])
    assert m.free_count(6) == 2**96 - 1
    start = time.perf_counter()
    got = {m.allocate(OWN, ANY6, claims(n)).address.ip for n in range(2000)}
    assert time.perf_counter() - start < 5.0
    assert len(got) == 2000
    assert all(a in net("2001:db8::/32") for a in got)


def test_random_choice_spreads() -> None:
    m = manager([V4_24], rng=random.Random(7))
    got = [m.allocate(OWN, ANY4, claims(n)).address.ip for n in range(20)]
    assert got != sorted(got)  # not handed out in order


def test_nearly_full_pool_with_stuck_rng() -> None:
    m = manager([V4_24], rng=StuckRandom())
    got = {m.allocate(OWN, ANY4, claims(n)).address.ip for n in range(254)}
    assert len(got) == 254
    assert m.free_count(4) == 0
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY4, claims(999))
    freed = next(g.address for g in m.grants() if g.identity == claims(200).id())
    assert m.deallocate(alloc_id(200))
    assert m.allocate(OWN, ANY4, claims(999)).address.ip == freed


def test_nearly_full_pool_with_real_rng() -> None:
    m = manager([V4_24], rng=random.Random(3))
    for n in range(253):
        m.allocate(OWN, ANY4, claims(n))
    last = m.allocate(OWN, ANY4, claims(1000)).address.ip
    assert {g.address for g in m.grants()} == set(V4_24.hosts())
    assert last in V4_24


# --- construction, inspection, persistence -----------------------------------------------------


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="wildcard"):
        AddressManager(IsdAs(1, 0), [V4_24])
    with pytest.raises(ValueError, match="overlap"):
        AddressManager(OWN, [V4_24, net("192.168.0.128/25")])
    with pytest.raises(ValueError, match="hold_time"):
        AddressManager(OWN, [V4_24], hold_time=-1)
    with pytest.raises(TypeError):
        AddressManager(OWN, ["192.168.0.0/24"])  # type: ignore[list-item]
    m = AddressManager(OWN, [V4_24, V6_64])
    assert m.isd_as == OWN
    assert m.prefixes == (V4_24, V6_64)
    with pytest.raises(ValueError, match="version"):
        m.free_count(5)


def test_grants_and_restore_round_trip() -> None:
    clock = FakeClock()
    m = manager(clock=clock)
    m.allocate(OWN, host("192.168.0.1"), claims(1))
    m.allocate(OWN, host("2001:db8::1"), claims(2))
    m.put_on_hold(alloc_id(2))
    snapshot = m.grants()
    assert snapshot == [
        Grant(claims(1).id(), ip("192.168.0.1"), GrantState.ACTIVE, None),
        Grant(claims(2).id(), ip("2001:db8::1"), GrantState.HELD, clock.now + HOLD),
    ]
    restored = manager(clock=clock)
    restored.allocate(OWN, host("192.168.0.50"), claims(9))  # replaced by restore
    restored.restore(snapshot)
    assert restored.grants() == snapshot
    assert restored.free_count(4) == m.free_count(4) == 253
    assert restored.free_count(6) == m.free_count(6)
    # The held grant comes back to its identity, and expires on time.
    with pytest.raises(AddressUnavailable):
        restored.allocate(OWN, host("2001:db8::1"), claims(3))
    clock.advance(HOLD + 1)
    assert [g.identity for g in restored.grants()] == [claims(1).id()]


def test_restore_refuses_bad_snapshots() -> None:
    m = manager()
    m.allocate(OWN, host("192.168.0.1"), claims(1))
    before = m.grants()
    a, b = claims(1).id(), claims(2).id()
    bad_snapshots = [
        [Grant(a, ip("10.0.0.1"), GrantState.ACTIVE)],
        [Grant(a, ip("192.168.0.0"), GrantState.ACTIVE)],
        [
            Grant(a, ip("192.168.0.1"), GrantState.ACTIVE),
            Grant(a, ip("192.168.0.2"), GrantState.ACTIVE),
        ],
        [
            Grant(a, ip("192.168.0.1"), GrantState.ACTIVE),
            Grant(b, ip("192.168.0.1"), GrantState.ACTIVE),
        ],
    ]
    for snapshot in bad_snapshots:
        with pytest.raises(ValueError):  # noqa: PT011 (messages differ per case)
            m.restore(snapshot)
        assert m.grants() == before
    with pytest.raises(ValueError, match="hold_until"):
        Grant(a, ip("192.168.0.1"), GrantState.HELD)
    with pytest.raises(ValueError, match="hold_until"):
        Grant(a, ip("192.168.0.1"), GrantState.ACTIVE, 5.0)


def test_restore_drops_holds_already_over() -> None:
    clock = FakeClock()
    m = manager(clock=clock)
    m.restore([Grant("x", ip("192.168.0.1"), GrantState.HELD, clock.now - 1)])
    assert m.grants() == []
    assert m.free_count(4) == 254


# --- reserved addresses --------------------------------------------------------------------

GATEWAY4 = ip("192.168.0.1")
GATEWAY6 = ip("2001:db8::1")


def reserving(
    prefixes: list[IPNetwork], *reserved: str, rng: random.Random | None = None
) -> AddressManager:
    return AddressManager(
        OWN,
        prefixes,
        hold_time=HOLD,
        clock=FakeClock(),
        rng=rng or random.Random(1),
        reserved=[ip(a) for a in reserved],
    )


@pytest.mark.parametrize("address", ["192.168.0.1", "2001:db8::1"])
def test_reserved_address_is_never_granted_on_request(address: str) -> None:
    m = reserving([V4_24, V6_64], "192.168.0.1", "2001:db8::1")
    with pytest.raises(AddressUnavailable, match="reserved"):
        m.allocate(OWN, host(address), claims(1))
    assert m.grants() == []
    # Not even to an identity that holds another address (its grant stays).
    m.allocate(OWN, host("192.168.0.7"), claims(2))
    with pytest.raises(AddressUnavailable, match="reserved"):
        m.allocate(OWN, host(address), claims(2))
    assert [g.address for g in m.grants()] == [ip("192.168.0.7")]


def test_reserved_address_is_never_picked() -> None:
    m = reserving([net("10.0.0.0/30"), net("2001:db8::/127")], "10.0.0.1", "2001:db8::")
    for n in range(20):  # the random picks never land on it
        got = m.allocate(OWN, ANY4, claims(n)).address.ip
        assert got == ip("10.0.0.2")
        m.deallocate(alloc_id(n))
    assert m.allocate(OWN, ANY4, claims(1)).address.ip == ip("10.0.0.2")
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY4, claims(2))
    assert m.allocate(OWN, ANY6, claims(3)).address.ip == ip("2001:db8::1")
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY6, claims(4))


def test_reserved_address_is_skipped_by_the_walk() -> None:
    # StuckRandom always tries index 0 (10.0.0.1, reserved), then walks from it.
    m = reserving([net("10.0.0.0/29")], "10.0.0.1", "10.0.0.2", rng=StuckRandom())
    got = [m.allocate(OWN, ANY4, claims(n)).address.ip for n in range(4)]
    assert got == [ip(f"10.0.0.{i}") for i in (3, 4, 5, 6)]
    with pytest.raises(NoAddressesAvailable):
        m.allocate(OWN, ANY4, claims(9))


def test_free_count_excludes_reserved() -> None:
    # Reserved addresses outside the pools, or unusable ones, do not count.
    m = reserving(
        [V4_24, V6_64], "192.168.0.1", "192.168.0.0", "10.0.0.1", "2001:db8::1", "fd00::1"
    )
    assert m.free_count(4) == 253
    assert m.free_count(6) == 2**64 - 2
    assert m.reserved == {
        ip(a) for a in ("192.168.0.1", "192.168.0.0", "10.0.0.1", "2001:db8::1", "fd00::1")
    }
    m.allocate(OWN, ANY4, claims(1))
    assert m.free_count(4) == 252
    assert reserving([V4_24]).reserved == frozenset()


def test_restore_refuses_reserved_address() -> None:
    m = reserving([V4_24], "192.168.0.1")
    with pytest.raises(ValueError, match="reserved"):
        m.restore([Grant("x", GATEWAY4, GrantState.ACTIVE)])
    assert m.grants() == []


def test_reserved_must_be_addresses() -> None:
    with pytest.raises(TypeError):
        AddressManager(OWN, [V4_24], reserved=["192.168.0.1"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        AddressManager(OWN, [V4_24], reserved=[V4_24])  # type: ignore[list-item]


def test_is_usable() -> None:
    m = reserving([V4_24, V6_64], "192.168.0.1", "2001:db8::1")
    m.allocate(OWN, host("192.168.0.2"), claims(1))
    assert m.is_usable(ip("192.168.0.2"))  # granted, but usable
    assert m.is_usable(ip("2001:db8::2"))
    for address in ("192.168.0.1", "2001:db8::1", "192.168.0.0", "192.168.0.255", "10.0.0.1"):
        assert not m.is_usable(ip(address))


# --- accessors for persistence -------------------------------------------------------------


def test_now_reads_the_clock() -> None:
    clock = FakeClock(5.0)
    m = manager(clock=clock)
    assert m.now() == 5.0
    clock.advance(1.5)
    assert m.now() == 6.5


def test_grant_of() -> None:
    clock = FakeClock()
    m = manager(clock=clock)
    assert m.grant_of(claims(1).id()) is None
    m.allocate(OWN, host("192.168.0.1"), claims(1))
    assert m.grant_of(claims(1).id()) == Grant(claims(1).id(), ip("192.168.0.1"), GrantState.ACTIVE)
    m.put_on_hold(alloc_id(1))
    held = Grant(claims(1).id(), ip("192.168.0.1"), GrantState.HELD, clock.now + HOLD)
    assert m.grant_of(claims(1).id()) == held
    clock.advance(HOLD + 1)  # the hold ends: expired lazily like every other call
    assert m.grant_of(claims(1).id()) is None
    assert m.free_count(4) == 254


def test_is_an_address_allocator() -> None:
    allocator: AddressAllocator[SnapTokenClaims] = manager()
    assert allocator.allocate(OWN, ANY4, claims(1)).address.isd_as == OWN


def test_errors_share_a_base() -> None:
    for cls in (NoAddressesAvailable, AddressUnavailable, UnsupportedIsdAs):
        assert issubclass(cls, AddressAllocationError)


# --- stateful property test ------------------------------------------------------------------

SM_HOLD = 10.0
SM_POOL4 = net("10.0.0.0/30")  # 10.0.0.1, 10.0.0.2
SM_POOL6 = net("2001:db8::/126")  # ::1, ::2, ::3 (reserved)
SM_RESERVED = [ip("2001:db8::3"), ip("10.0.0.99")]  # one inside a pool, one outside
SM_USABLE = {
    4: {ip("10.0.0.1"), ip("10.0.0.2")},
    6: {ip("2001:db8::1"), ip("2001:db8::2")},
}
SM_REQUESTS = [
    ANY4,
    ANY6,
    *(host(a) for a in ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.9.9")),
    *(host(a) for a in ("2001:db8::", "2001:db8::1", "2001:db8::3", "2001:db8::4")),
]
SM_IDENTITIES = [1, 2, 3, 4]


class AllocatorMachine(RuleBasedStateMachine):
    """Drives an AddressManager and a plain model of the allocation rules side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.manager = self._new_manager()
        # identity -> (address, hold_until or None)
        self.model: dict[str, tuple[IPAddress, float | None]] = {}

    def _new_manager(self) -> AddressManager:
        return AddressManager(
            OWN,
            [SM_POOL4, SM_POOL6],
            hold_time=SM_HOLD,
            clock=self.clock,
            rng=random.Random(0),
            reserved=SM_RESERVED,
        )

    def _expire_model(self) -> None:
        now = self.clock.now
        self.model = {
            who: (addr, until)
            for who, (addr, until) in self.model.items()
            if until is None or now <= until
        }

    @rule(n=st.sampled_from(SM_IDENTITIES), request=st.sampled_from(SM_REQUESTS))
    def allocate(self, n: int, request: IPNetwork) -> None:
        self._expire_model()
        who = claims(n).id()
        wanted = request.network_address
        current = self.model.get(who)
        others = {addr for other, (addr, _) in self.model.items() if other != who}
        try:
            got = self.manager.allocate(OWN, request, claims(n))
        except NoAddressesAvailable:
            assert wanted.is_unspecified
            assert current is None or current[0].version != wanted.version
            assert SM_USABLE[wanted.version] <= others
            return
        except AddressUnavailable:
            assert not wanted.is_unspecified
            assert current is None or current[0] != wanted
            assert wanted not in SM_USABLE[wanted.version] or wanted in others
            return
        address = got.address.ip
        assert got.address.isd_as == OWN
        assert got.id == AddressAllocationId(OWN, who)
        if not wanted.is_unspecified:
            assert address == wanted
        elif current is not None and current[0].version == wanted.version:
            assert address == current[0]
        assert address in SM_USABLE[address.version]
        assert address not in others  # never someone else's, active or held
        self.model[who] = (address, None)

    @rule(n=st.sampled_from(SM_IDENTITIES))
    def put_on_hold(self, n: int) -> None:
        self._expire_model()
        who = claims(n).id()
        expected = who in self.model and self.model[who][1] is None
        assert self.manager.put_on_hold(alloc_id(n)) == expected
        if expected:
            self.model[who] = (self.model[who][0], self.clock.now + SM_HOLD)

    @rule(n=st.sampled_from(SM_IDENTITIES))
    def deallocate(self, n: int) -> None:
        self._expire_model()
        who = claims(n).id()
        assert self.manager.deallocate(alloc_id(n)) == (who in self.model)
        self.model.pop(who, None)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, SM_HOLD - 1, SM_HOLD, SM_HOLD + 0.5]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def restart(self) -> None:
        snapshot = self.manager.grants()
        self.manager = self._new_manager()
        self.manager.restore(snapshot)

    @invariant()
    def matches_model(self) -> None:
        self._expire_model()
        grants = self.manager.grants()
        addresses = [g.address for g in grants]
        assert len(addresses) == len(set(addresses))
        assert {g.identity: (g.address, g.hold_until) for g in grants} == self.model
        for g in grants:
            assert (g.state is GrantState.HELD) == (g.hold_until is not None)

    @invariant()
    def free_count_consistent(self) -> None:
        self._expire_model()
        for version, usable in SM_USABLE.items():
            used = sum(1 for addr, _ in self.model.values() if addr.version == version)
            assert self.manager.free_count(version) == len(usable) - used


AllocatorMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestAllocatorMachine = AllocatorMachine.TestCase
