"""Tests of snaptun.gateway.store: grants in SQLite, restarts, and failures, with a fake clock."""

from __future__ import annotations

import ipaddress
import logging
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from snaptun.core.addressing import IPAddress, IPNetwork, IsdAs
from snaptun.core.allocator import (
    AddressAllocationId,
    AddressAllocator,
    AddressManager,
    Grant,
    GrantState,
)
from snaptun.core.tokens import SnapTokenClaims
from snaptun.errors import AddressAllocationError, AddressUnavailable, NoAddressesAvailable
from snaptun.gateway.store import (
    SCHEMA_VERSION,
    GrantNotStored,
    GrantStore,
    GrantStoreError,
    PersistentAllocator,
)

OWN = IsdAs.parse("1-ff00:0:110")
HOLD = 600.0
T0 = 1_000_000.0
ANY4 = ipaddress.ip_network("0.0.0.0/32")
POOL = ipaddress.ip_network("10.0.0.0/30")  # usable: 10.0.0.1, 10.0.0.2
A, B, C = 1, 2, 3


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def host(text: str) -> IPNetwork:
    return ipaddress.ip_network(ipaddress.ip_address(text))


def claims(n: int) -> SnapTokenClaims:
    return SnapTokenClaims(uuid.UUID(int=n), 2_000_000_000)


def who(n: int) -> str:
    return claims(n).id()


def alloc_id(n: int) -> AddressAllocationId:
    return AddressAllocationId(OWN, who(n))


def manager(clock: FakeClock, prefixes: list[IPNetwork] | None = None) -> AddressManager:
    return AddressManager(
        OWN, prefixes or [POOL], hold_time=HOLD, clock=clock, rng=random.Random(7)
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "grants.sqlite3"


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the write lock meanwhile."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def stored(path: Path) -> list[Grant]:
    """What a fresh GrantStore on the file sees (as a new process would)."""
    with GrantStore(path) as store:
        return store.load()


# --- GrantStore ----------------------------------------------------------------------------


def test_new_store_has_versioned_schema_in_wal_mode(db: Path) -> None:
    GrantStore(db).close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        raw.close()
    with GrantStore(db) as store:  # reopening an existing store
        assert store.load() == []
        assert store.path == db


def test_put_load_remove(db: Path) -> None:
    active = Grant("a", ip("10.0.0.1"), GrantState.ACTIVE)
    held = Grant("b", ip("2001:db8::1"), GrantState.HELD, T0 + 0.125)
    with GrantStore(db) as store:
        store.put(held)
        store.put(active)
        assert store.load() == [active, held]  # sorted by identity
        moved = Grant("a", ip("10.0.0.2"), GrantState.HELD, T0)
        store.put(moved)  # one row per identity
        assert store.load() == [moved, held]
        store.remove("a")
        store.remove("nobody")
        assert store.load() == [held]
    assert stored(db) == [held]


def test_put_deletes_another_row_with_the_same_address(db: Path) -> None:
    with GrantStore(db) as store:
        store.put(Grant("a", ip("10.0.0.1"), GrantState.HELD, T0))  # a hold that ended
        store.put(Grant("b", ip("10.0.0.1"), GrantState.ACTIVE))
        assert store.load() == [Grant("b", ip("10.0.0.1"), GrantState.ACTIVE)]


def test_replace_all_is_one_transaction(db: Path) -> None:
    first = [Grant("a", ip("10.0.0.1"), GrantState.ACTIVE)]
    with GrantStore(db) as store:
        store.replace_all(first)
        clash = [
            Grant("b", ip("10.0.0.2"), GrantState.ACTIVE),
            Grant("c", ip("10.0.0.2"), GrantState.ACTIVE),
        ]
        with pytest.raises(GrantStoreError, match="replace_all failed"):
            store.replace_all(clash)
        assert store.load() == first
        store.replace_all([])
        assert store.load() == []


def test_sweep_deletes_only_ended_holds(db: Path) -> None:
    with GrantStore(db) as store:
        store.replace_all(
            [
                Grant("a", ip("10.0.0.1"), GrantState.ACTIVE),
                Grant("b", ip("10.0.0.2"), GrantState.HELD, T0 - 1),
                Grant("c", ip("10.0.0.3"), GrantState.HELD, T0),  # ends only after T0
            ]
        )
        assert store.sweep(T0) == 1
        assert [g.identity for g in store.load()] == ["a", "c"]


def test_corrupted_file_is_a_clear_error(db: Path) -> None:
    db.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(GrantStoreError, match=r"grants\.sqlite3: open failed: .*not a database"):
        GrantStore(db)
    with pytest.raises(GrantStoreError, match="not a database"):
        PersistentAllocator.open(manager(FakeClock()), db)


def test_foreign_database_is_refused(db: Path) -> None:
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE something (x)")
    raw.commit()
    raw.close()
    with pytest.raises(GrantStoreError, match="not a snaptun grant store"):
        GrantStore(db)


def test_unknown_schema_version_is_refused(db: Path) -> None:
    GrantStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(GrantStoreError, match=r"schema version \[99\] is not supported"):
        GrantStore(db)


def test_bad_row_is_a_clear_error(db: Path) -> None:
    GrantStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute("INSERT INTO grants VALUES ('a', 'not-an-ip', 'active', NULL)")
    raw.commit()
    raw.close()
    with GrantStore(db) as store, pytest.raises(GrantStoreError, match="bad row"):
        store.load()


def test_locked_database_is_a_clear_error(db: Path) -> None:
    with GrantStore(db, busy_timeout=0.05) as store, write_locked(db):
        with pytest.raises(GrantStoreError, match=r"locked.*second gateway"):
            store.put(Grant("a", ip("10.0.0.1"), GrantState.ACTIVE))
        assert store.load() == []  # WAL: reading goes on meanwhile
    assert stored(db) == []


def test_closed_store(db: Path) -> None:
    store = GrantStore(db)
    store.close()
    store.close()
    with pytest.raises(GrantStoreError, match="closed"):
        store.load()
    with pytest.raises(GrantStoreError, match="closed"):
        store.put(Grant("a", ip("10.0.0.1"), GrantState.ACTIVE))


def test_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(GrantStoreError, match="open failed"):
        GrantStore(tmp_path / "missing-dir" / "grants.sqlite3")


# --- PersistentAllocator: writing before answering ------------------------------------------


def test_grant_is_written_before_the_answer(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db) as allocator:
        got = allocator.allocate(OWN, host("10.0.0.2"), claims(A))
        assert got.address.ip == ip("10.0.0.2")
        assert stored(db) == [Grant(who(A), ip("10.0.0.2"), GrantState.ACTIVE)]
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))  # moves: the row follows
        assert stored(db) == [Grant(who(A), ip("10.0.0.1"), GrantState.ACTIVE)]


def test_hold_and_deallocate_are_written(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        allocator.allocate(OWN, host("10.0.0.2"), claims(B))
        assert allocator.put_on_hold(alloc_id(A))
        assert not allocator.put_on_hold(alloc_id(A))  # already held
        assert allocator.deallocate(alloc_id(B))
        assert not allocator.deallocate(alloc_id(B))
        expected = [Grant(who(A), ip("10.0.0.1"), GrantState.HELD, T0 + HOLD)]
        assert stored(db) == expected
        assert allocator.grants() == expected
        assert allocator.free_count(4) == 1
        assert allocator.isd_as == OWN


def test_is_an_address_allocator(db: Path) -> None:
    with PersistentAllocator.open(manager(FakeClock()), db) as persistent:
        allocator: AddressAllocator[SnapTokenClaims] = persistent
        assert allocator.allocate(OWN, ANY4, claims(A)).address.isd_as == OWN


# --- PersistentAllocator: restarts ------------------------------------------------------------


def test_held_address_survives_a_crash(db: Path) -> None:
    clock = FakeClock()
    first = PersistentAllocator.open(manager(clock), db)
    first.allocate(OWN, host("10.0.0.1"), claims(A))
    first.put_on_hold(alloc_id(A))
    hold_until = T0 + HOLD
    del first  # the process dies: no hold_all, no close

    clock.advance(60)
    allocator = PersistentAllocator.open(manager(clock), db, now=clock.now)
    assert allocator.grants() == [Grant(who(A), ip("10.0.0.1"), GrantState.HELD, hold_until)]
    with pytest.raises(AddressUnavailable):
        allocator.allocate(OWN, host("10.0.0.1"), claims(B))
    assert allocator.allocate(OWN, ANY4, claims(B)).address.ip == ip("10.0.0.2")
    with pytest.raises(NoAddressesAvailable):  # the only other address is A's
        allocator.allocate(OWN, ANY4, claims(C))
    allocator.deallocate(alloc_id(B))
    for n in range(10, 30):  # "any" never lands on A's address
        assert allocator.allocate(OWN, ANY4, claims(n)).address.ip == ip("10.0.0.2")
        allocator.deallocate(alloc_id(n))
    assert allocator.allocate(OWN, ANY4, claims(A)).address.ip == ip("10.0.0.1")
    assert stored(db) == [Grant(who(A), ip("10.0.0.1"), GrantState.ACTIVE)]
    allocator.close()


def test_held_address_is_free_once_the_hold_ends_after_a_crash(db: Path) -> None:
    clock = FakeClock()
    first = PersistentAllocator.open(manager(clock), db)
    first.allocate(OWN, host("10.0.0.1"), claims(A))
    first.put_on_hold(alloc_id(A))
    del first

    clock.advance(10)
    with PersistentAllocator.open(manager(clock), db) as allocator:  # now: the manager's clock
        with pytest.raises(AddressUnavailable):
            allocator.allocate(OWN, host("10.0.0.1"), claims(B))
        clock.advance(HOLD)  # T0 + HOLD + 10: the hold has ended
        assert allocator.allocate(OWN, host("10.0.0.1"), claims(B)).address.ip == ip("10.0.0.1")
        assert stored(db) == [Grant(who(B), ip("10.0.0.1"), GrantState.ACTIVE)]


def test_active_grant_of_a_dead_process_becomes_a_hold(db: Path) -> None:
    clock = FakeClock()
    first = PersistentAllocator.open(manager(clock), db)
    first.allocate(OWN, host("10.0.0.1"), claims(A))
    del first  # the tunnel died with the process

    clock.advance(3600)
    restart = clock.now
    with PersistentAllocator.open(manager(clock), db, now=restart) as allocator:
        held = [Grant(who(A), ip("10.0.0.1"), GrantState.HELD, restart + HOLD)]
        assert allocator.grants() == held
        assert stored(db) == held  # the file is rewritten at start-up
        with pytest.raises(AddressUnavailable):
            allocator.allocate(OWN, host("10.0.0.1"), claims(B))
        clock.advance(HOLD + 1)
        assert allocator.allocate(OWN, host("10.0.0.1"), claims(B)).address.ip == ip("10.0.0.1")


def test_hold_all_on_shutdown(db: Path) -> None:
    clock = FakeClock()
    allocator = PersistentAllocator.open(manager(clock), db)
    allocator.allocate(OWN, host("10.0.0.1"), claims(A))
    allocator.allocate(OWN, host("10.0.0.2"), claims(B))
    clock.advance(5)
    allocator.put_on_hold(alloc_id(B))
    clock.advance(5)
    allocator.hold_all()
    allocator.close()
    expected = [
        Grant(who(A), ip("10.0.0.1"), GrantState.HELD, T0 + 10 + HOLD),  # held at shutdown
        Grant(who(B), ip("10.0.0.2"), GrantState.HELD, T0 + 5 + HOLD),  # its own hold kept
    ]
    assert stored(db) == expected

    clock.advance(100)
    with PersistentAllocator.open(manager(clock), db) as again:
        assert again.grants() == expected  # holds keep their end, not restart + hold time
        assert again.allocate(OWN, ANY4, claims(B)).address.ip == ip("10.0.0.2")
        with pytest.raises(NoAddressesAvailable):
            again.allocate(OWN, ANY4, claims(C))


def test_holds_that_ended_are_not_resurrected(db: Path) -> None:
    clock = FakeClock()
    first = PersistentAllocator.open(manager(clock), db)
    first.allocate(OWN, host("10.0.0.1"), claims(A))
    first.put_on_hold(alloc_id(A))
    clock.advance(HOLD + 1)
    assert first.free_count(4) == 2  # the manager dropped A's hold, lazily and silently
    del first

    with PersistentAllocator.open(manager(clock), db) as allocator:
        assert allocator.grants() == []
        assert stored(db) == []


def test_reused_address_is_not_resurrected_even_if_the_clock_steps_back(db: Path) -> None:
    clock = FakeClock()
    first = PersistentAllocator.open(manager(clock), db)
    first.allocate(OWN, host("10.0.0.1"), claims(A))
    first.put_on_hold(alloc_id(A))
    clock.advance(HOLD + 1)
    first.allocate(OWN, host("10.0.0.1"), claims(B))  # A's hold ended: B takes the address
    assert stored(db) == [Grant(who(B), ip("10.0.0.1"), GrantState.ACTIVE)]
    del first

    clock.now = T0 + 1  # before A's hold would have ended
    with PersistentAllocator.open(manager(clock), db) as allocator:
        assert [g.identity for g in allocator.grants()] == [who(B)]


def test_sweep_deletes_rows_of_ended_holds(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        allocator.allocate(OWN, host("10.0.0.2"), claims(B))
        allocator.put_on_hold(alloc_id(A))
        clock.advance(HOLD)
        assert allocator.sweep() == 0  # the hold ends only after T0 + HOLD
        clock.advance(1)
        assert allocator.sweep() == 1
        assert stored(db) == [Grant(who(B), ip("10.0.0.2"), GrantState.ACTIVE)]


def test_open_drops_grants_this_allocator_cannot_give(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with GrantStore(db) as store:
        store.replace_all(
            [
                Grant("old-prefix", ip("192.168.0.5"), GrantState.ACTIVE),
                Grant("now-reserved", ip("10.0.0.1"), GrantState.HELD, T0 + 50),
                Grant("kept", ip("10.0.0.2"), GrantState.HELD, T0 + 50),
            ]
        )
    clock = FakeClock()
    reserving = AddressManager(OWN, [POOL], hold_time=HOLD, clock=clock, reserved=[ip("10.0.0.1")])
    with caplog.at_level(logging.WARNING), PersistentAllocator.open(reserving, db) as allocator:
        kept = [Grant("kept", ip("10.0.0.2"), GrantState.HELD, T0 + 50)]
        assert allocator.grants() == kept
        assert stored(db) == kept
    assert "old-prefix" in caplog.text
    assert "now-reserved" in caplog.text


# --- PersistentAllocator: write failures ---------------------------------------------------------


def test_failed_write_refuses_a_new_grant(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        with write_locked(db), pytest.raises(GrantNotStored, match="could not be stored") as info:
            allocator.allocate(OWN, ANY4, claims(A))
        assert isinstance(info.value, AddressAllocationError)  # the server answers a refusal
        assert isinstance(info.value.__cause__, GrantStoreError)
        assert allocator.grants() == []
        assert allocator.free_count(4) == 2
        assert stored(db) == []
        # Once the file is writable again, the same request succeeds.
        allocator.allocate(OWN, ANY4, claims(A))
        assert [g.identity for g in stored(db)] == [who(A)]


def test_failed_write_restores_the_previous_grant(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        allocator.put_on_hold(alloc_id(A))
        before = allocator.grants()
        clock.advance(10)
        with write_locked(db):
            with pytest.raises(GrantNotStored):
                allocator.allocate(OWN, host("10.0.0.2"), claims(A))  # a move
            with pytest.raises(GrantNotStored):
                allocator.allocate(OWN, ANY4, claims(A))  # a reactivation
        assert allocator.grants() == before  # still held, until the same moment
        assert stored(db) == before


def test_repeated_request_needs_no_write(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        first = allocator.allocate(OWN, ANY4, claims(A))
        with write_locked(db):
            assert allocator.allocate(OWN, ANY4, claims(A)) == first


def test_failed_hold_or_free_write_is_logged_and_repaired_by_sweep(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        allocator.allocate(OWN, host("10.0.0.2"), claims(B))
        with caplog.at_level(logging.WARNING), write_locked(db):
            assert allocator.put_on_hold(alloc_id(A))  # the manager's hold stands
            assert allocator.deallocate(alloc_id(B))  # and so does the free
        assert "not stored" in caplog.text
        held = [Grant(who(A), ip("10.0.0.1"), GrantState.HELD, T0 + HOLD)]
        assert allocator.grants() == held
        # The file still says both are active: on a restart now, both would be
        # held, which keeps addresses longer than needed but never gives one away.
        assert [g.state for g in stored(db)] == [GrantState.ACTIVE, GrantState.ACTIVE]
        assert allocator.sweep() == 0  # a full rewrite
        assert stored(db) == held


def test_failed_hold_all_raises(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        with write_locked(db), pytest.raises(GrantStoreError, match="locked"):
            allocator.hold_all()
    # The row is still active, so the next start holds it anyway.
    clock.advance(1)
    with PersistentAllocator.open(manager(clock), db) as again:
        assert again.grants() == [Grant(who(A), ip("10.0.0.1"), GrantState.HELD, T0 + 1 + HOLD)]


# --- durability: grants synced, holds and frees not -------------------------------------------


def _synchronous(store: GrantStore) -> int:
    row = store._db.execute("PRAGMA synchronous").fetchone()  # 2 = FULL, 1 = NORMAL
    return int(row[0])


def test_grants_are_synced_and_holds_and_frees_are_not(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db) as allocator:
        statements: list[str] = []
        allocator.store._db.set_trace_callback(statements.append)
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        assert statements[0] == "BEGIN IMMEDIATE"  # at the connection's FULL
        assert not any("synchronous" in s for s in statements)
        assert _synchronous(allocator.store) == 2
        for change in (allocator.put_on_hold, allocator.deallocate):
            statements.clear()
            assert change(alloc_id(A))
            assert statements[:2] == ["PRAGMA synchronous=NORMAL", "BEGIN IMMEDIATE"]
            assert statements[-2:] == ["COMMIT", "PRAGMA synchronous=FULL"]
            assert _synchronous(allocator.store) == 2
        assert stored(db) == []


def test_a_failed_unsynced_write_leaves_the_store_synced(db: Path) -> None:
    clock = FakeClock()
    with PersistentAllocator.open(manager(clock), db, busy_timeout=0.05) as allocator:
        allocator.allocate(OWN, host("10.0.0.1"), claims(A))
        with write_locked(db):
            assert allocator.put_on_hold(alloc_id(A))  # the write fails, logged
        assert _synchronous(allocator.store) == 2
        with pytest.raises(GrantStoreError), write_locked(db):
            allocator.store.put(Grant(who(B), ip("10.0.0.2"), GrantState.HELD, T0), sync=False)
        assert _synchronous(allocator.store) == 2


_CRASHING_WRITER = """
import ipaddress, random, sys, time, uuid
from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressAllocationId, AddressManager
from snaptun.core.tokens import SnapTokenClaims
from snaptun.gateway.store import PersistentAllocator

own = IsdAs.parse("1-ff00:0:110")
manager = AddressManager(own, [ipaddress.ip_network("10.0.0.0/30")], hold_time=600.0,
                         clock=lambda: 1_000_000.0, rng=random.Random(7))
allocator = PersistentAllocator.open(manager, sys.argv[1])
for n in (1, 2):
    allocator.allocate(own, ipaddress.ip_network("10.0.0.%d/32" % n),
                       SnapTokenClaims(uuid.UUID(int=n), 2_000_000_000))
allocator.put_on_hold(AddressAllocationId(own, str(uuid.UUID(int=1))))
print("written", flush=True)
time.sleep(60)
"""


def test_an_unsynced_hold_survives_kill_9(db: Path) -> None:
    """The process dies without closing the store: its grant and unsynced hold are in the file."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "written\n"
    finally:
        child.kill()  # SIGKILL: no close, no checkpoint
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert stored(db) == [
        Grant(who(A), ip("10.0.0.1"), GrantState.HELD, T0 + HOLD),
        Grant(who(B), ip("10.0.0.2"), GrantState.ACTIVE),
    ]
