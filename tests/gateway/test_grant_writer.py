"""The gateway writes the grants the core returns: before the answer, refused if it fails."""

from __future__ import annotations

import contextlib
import ipaddress
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from snaptun.core.addressing import IsdAs
from snaptun.core.allocator import AddressManager, GrantState
from snaptun.core.control import ControlRequest, RequestKind
from snaptun.core.state import TunnelStateMachine
from snaptun.gateway.grant_writer import GrantWriter
from snaptun.gateway.store import PersistentAllocator
from tests.core.test_state import FakeValidator, tok

IA = IsdAs.parse("1-ff00:0:110")
NOW = 1_800_000_000.0


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection."""
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def open_store(tmp_path: Path) -> PersistentAllocator:
    manager = AddressManager(
        IA, [ipaddress.ip_network("10.0.0.0/29")], hold_time=600.0, clock=lambda: NOW
    )
    return PersistentAllocator.open(manager, tmp_path / "grants.sqlite3", busy_timeout=0.05)


def request(kind: RequestKind) -> ControlRequest:
    return ControlRequest(kind, tok(exp=NOW + 60))


def test_a_grant_is_on_disk_before_it_is_answered(tmp_path: Path) -> None:
    with open_store(tmp_path) as persistent:
        writer = GrantWriter(persistent)
        machine = TunnelStateMachine(FakeValidator(), persistent.manager)
        machine.setup_request(NOW, request(RequestKind.SESSION_RENEWAL))
        step = machine.setup_request(NOW, request(RequestKind.ADDRESS_ASSIGNMENT))
        assert step.store is not None
        assert step.answer is None
        assert writer(step.store)
        assert persistent.store.load() == [step.store.after]  # written, not yet answered
        answer = machine.stored(ok=True).answer
        assert answer is not None
        assert answer.ok
        hold = machine.shutdown(NOW + 1)
        assert hold is not None
        assert writer(hold)
        [row] = persistent.store.load()
        assert row.state is GrantState.HELD


def test_a_failed_write_is_refused_undone_and_repaired_by_the_sweep(tmp_path: Path) -> None:
    with open_store(tmp_path) as persistent:
        writer = GrantWriter(persistent)
        machine = TunnelStateMachine(FakeValidator(), persistent.manager)
        machine.setup_request(NOW, request(RequestKind.SESSION_RENEWAL))
        step = machine.setup_request(NOW, request(RequestKind.ADDRESS_ASSIGNMENT))
        assert step.store is not None
        with write_locked(persistent.store.path):
            assert not writer(step.store)
        refused = machine.stored(ok=False)
        assert refused.answer is not None
        assert refused.answer.status == 400
        assert persistent.manager.grants() == []  # undone in memory
        assert persistent.store.load() == []  # and never on disk
        assert writer.dirty
        assert writer.sweep() == 0  # a full rewrite from the manager
        assert not writer.dirty
        assert persistent.store.load() == []


def test_a_hold_not_written_is_rewritten_by_the_next_sweep(tmp_path: Path) -> None:
    with open_store(tmp_path) as persistent:
        writer = GrantWriter(persistent)
        machine = TunnelStateMachine(FakeValidator(), persistent.manager)
        machine.setup_request(NOW, request(RequestKind.SESSION_RENEWAL))
        step = machine.setup_request(NOW, request(RequestKind.ADDRESS_ASSIGNMENT))
        assert step.store is not None
        assert writer(step.store)
        machine.stored(ok=True)
        hold = machine.shutdown(NOW)
        assert hold is not None
        with write_locked(persistent.store.path):
            assert not writer(hold)
        [row] = persistent.store.load()
        assert row.state is GrantState.ACTIVE  # stale, on the safe side
        writer.sweep()
        [row] = persistent.store.load()
        assert row.state is GrantState.HELD
