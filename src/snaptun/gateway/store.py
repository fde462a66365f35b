"""Address grants and holds kept in SQLite in the gateway's state directory.

The gateway issue asks: "Address grants and holds are kept in SQLite in the
state directory (written before a grant is answered). After a restart, a held
address is not handed to anyone else until its hold ends, and the identity
that held it gets it back."

* :class:`GrantStore` is the file: one row per identity, the same fields as
  :class:`~snaptun.core.allocator.Grant`.
* :class:`PersistentAllocator` wraps an in-memory
  :class:`~snaptun.core.allocator.AddressManager` (which stays the authority
  while the process runs) and writes every change of a grant to the store
  before it answers. :meth:`PersistentAllocator.open` rebuilds the manager
  from the file at start-up.

What the file may hold, compared with the manager:

* every grant the manager answered with is in the file (a grant whose write
  fails is refused and undone, so no client holds an address the file lacks);
* rows whose hold has ended may linger (the manager frees holds lazily and
  says nothing); :meth:`PersistentAllocator.open` ignores them and
  :meth:`PersistentAllocator.sweep` deletes them. They cannot block anyone:
  writing a grant deletes any other row with the same address first (the
  address column is unique), so a stale row never outlives the reuse of its
  address, even if the wall clock later steps back;
* after a failed write of a hold or a deallocation the row still says what it
  said before (an active grant, or a grant that was freed). That errs on the
  safe side: an active row becomes a hold at the next start, and the next
  :meth:`~PersistentAllocator.sweep` rewrites the whole table from the manager.

Errors::

    SnaptunError
    ├── GrantStoreError             the database could not be opened, read or written
    └── AddressAllocationError
        └── GrantNotStored          a grant was refused because it could not be written
                                    (__cause__: the GrantStoreError)

Durability: a grant is synced to disk before it is answered (it survives a
power cut). A hold or a deallocation is committed unsynced (``put(...,
sync=False)``): it survives a crash of the process (kill -9) at once, and a
power cut from the next synced commit or WAL checkpoint on. Losing it to a
power cut errs on the safe side, as a failed write does (above): the row
says "active" and becomes a hold from the next start. That halves the syncs
per tunnel (grant at setup, hold at close), which on this machine's ext4 cost
about 0.29 ms of wall time and 0.17 ms of CPU each.

Limits: each change is one SQLite transaction on the caller's thread (a
synced one takes about a third of a millisecond on a local disk, longer on a
slow one; an unsynced one about 50 µs). Grants change only when tunnels are
set up or closed, so the gateway calls these from its event loop. The
connection belongs to the thread that opened it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from snaptun.core.addressing import IPNetwork, IsdAs
from snaptun.core.allocator import (
    AddressAllocation,
    AddressAllocationId,
    AddressManager,
    Grant,
    GrantState,
)
from snaptun.core.tokens import Token
from snaptun.errors import AddressAllocationError, SnaptunError

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "GrantNotStored",
    "GrantStore",
    "GrantStoreError",
    "PersistentAllocator",
]

log = logging.getLogger(__name__)

#: The schema version this module writes and reads.
SCHEMA_VERSION: Final = 1

#: Seconds to wait for another connection's write lock before giving up. Short,
#: because the caller is the gateway's event loop; normally nobody else writes.
DEFAULT_BUSY_TIMEOUT: Final = 1.0

_SCHEMA: Final = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT",
    # The address is unique: one address, one identity (see put()).
    """CREATE TABLE grants (
        identity TEXT PRIMARY KEY NOT NULL,
        address TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL CHECK (state IN ('active', 'held')),
        hold_until REAL,
        CHECK ((state = 'held') = (hold_until IS NOT NULL))
    ) STRICT, WITHOUT ROWID""",
    "CREATE INDEX grants_hold_until ON grants (hold_until) WHERE hold_until IS NOT NULL",
)


class GrantStoreError(SnaptunError):
    """The grant database could not be opened, read or written."""


class GrantNotStored(AddressAllocationError):
    """A grant was refused because it could not be written to the grant store.

    The server answers it like any other refusal; ``__cause__`` is the
    :class:`GrantStoreError`.
    """


class GrantStore:
    """SQLite file of grants; one row per identity.

    The file is in WAL mode, so a reader (another ``GrantStore``, the
    ``sqlite3`` shell) never blocks the gateway's writes. ``synchronous=FULL``
    by default: a commit is synced to disk before it returns, so a grant that
    was answered survives a power cut as well as a crash. A write with
    ``sync=False`` runs at ``synchronous=NORMAL`` instead: committed to the WAL
    without a sync, so it survives a crash of the process but a power cut
    only once a later synced commit (which syncs the whole WAL) or a
    checkpoint has followed. WAL mode keeps the file consistent either way.

    A write lock held elsewhere is waited for up to ``busy_timeout`` seconds,
    then reported as :class:`GrantStoreError`. Every method raises
    :class:`GrantStoreError` for any SQLite failure, with the path and cause.
    """

    def __init__(self, path: Path, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self._path = path
        try:
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        self._closed = False
        try:
            self._db.execute("PRAGMA synchronous=FULL")
            self._ensure_schema()  # first: a file that is not ours is refused untouched
            self._set_wal_mode()
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error("open", exc) from exc
        except BaseException:
            self._db.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def load(self) -> list[Grant]:
        """Every stored grant, sorted by identity, as written (ended holds included)."""
        try:
            rows = self._conn().execute(
                "SELECT identity, address, state, hold_until FROM grants ORDER BY identity"
            )
            return [self._decode(row) for row in rows]
        except sqlite3.Error as exc:
            raise self._error("load", exc) from exc

    def put(self, grant: Grant, *, sync: bool = True) -> None:
        """Store ``grant`` as its identity's only row; committed before returning.

        Synced to disk first unless ``sync`` is False (see the class docstring).
        A row of another identity with the same address is deleted first: the
        manager granted the address, so that row can only be a hold that has
        ended.
        """
        with self._transaction("put", sync=sync) as db:
            db.execute(
                "DELETE FROM grants WHERE address = ? AND identity <> ?",
                (str(grant.address), grant.identity),
            )
            db.execute(
                """INSERT INTO grants (identity, address, state, hold_until) VALUES (?, ?, ?, ?)
                ON CONFLICT (identity) DO UPDATE SET address = excluded.address,
                    state = excluded.state, hold_until = excluded.hold_until""",
                _encode(grant),
            )

    def remove(self, identity: str, *, sync: bool = True) -> None:
        """Delete the identity's row, if any; committed (and synced, unless not ``sync``)."""
        with self._transaction("remove", sync=sync) as db:
            db.execute("DELETE FROM grants WHERE identity = ?", (identity,))

    def replace_all(self, grants: Iterable[Grant]) -> None:
        """Make ``grants`` the whole content, in one transaction.

        Two grants of one identity or one address raise :class:`GrantStoreError`
        and leave the file as it was.
        """
        rows = [_encode(g) for g in grants]
        with self._transaction("replace_all") as db:
            db.execute("DELETE FROM grants")
            db.executemany(
                "INSERT INTO grants (identity, address, state, hold_until) VALUES (?, ?, ?, ?)",
                rows,
            )

    def sweep(self, now: float) -> int:
        """Delete the holds that ended before ``now``; return how many."""
        with self._transaction("sweep") as db:
            cursor = db.execute(
                "DELETE FROM grants WHERE hold_until IS NOT NULL AND hold_until < ?", (now,)
            )
            return cursor.rowcount

    def close(self) -> None:
        """Close the file; later calls raise GrantStoreError. Closing twice is fine."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise GrantStoreError(f"grant store {self._path} is closed")
        return self._db

    def _error(self, what: str, exc: sqlite3.Error) -> GrantStoreError:
        hint = ""
        if "locked" in str(exc) or "busy" in str(exc):
            hint = " (another process is writing it: a second gateway on this state directory?)"
        return GrantStoreError(f"grant store {self._path}: {what} failed: {exc}{hint}")

    @contextlib.contextmanager
    def _transaction(self, what: str, *, sync: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any failure rolls back and raises GrantStoreError.

        ``sync=False``: this one commit at ``synchronous=NORMAL``; the
        connection is back at ``FULL`` afterwards, also after a failure.
        """
        db = self._conn()
        try:
            if not sync:
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, not halfway through
        except sqlite3.Error as exc:
            self._resync(db, sync)
            raise self._error(what, exc) from exc
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(what, exc) from exc
            raise
        finally:
            self._resync(db, sync)

    @staticmethod
    def _resync(db: sqlite3.Connection, sync: bool) -> None:
        """Back to ``synchronous=FULL`` after an unsynced transaction (no I/O)."""
        if not sync:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA synchronous=FULL")

    def _set_wal_mode(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise GrantStoreError(f"grant store {self._path}: cannot use WAL mode ({mode})")

    def _ensure_schema(self) -> None:
        with self._transaction("open") as db:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
            if not tables:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            if not {"schema_version", "grants"} <= tables:
                raise GrantStoreError(
                    f"grant store {self._path}: not a snaptun grant store (tables {sorted(tables)})"
                )
            versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
            if versions != [SCHEMA_VERSION]:
                raise GrantStoreError(
                    f"grant store {self._path}: schema version {versions} is not supported"
                    f" (this snaptun reads version {SCHEMA_VERSION})"
                )

    def _decode(self, row: tuple[object, ...]) -> Grant:
        identity, address, state, hold_until = row
        bad = f"grant store {self._path}: bad row {row!r}"
        # The STRICT table enforces these types; the check is for the type checker.
        if not (
            isinstance(identity, str)
            and isinstance(address, str)
            and (hold_until is None or isinstance(hold_until, float))
        ):  # pragma: no cover
            raise GrantStoreError(f"{bad}: wrong column types")
        try:
            return Grant(identity, ipaddress.ip_address(address), GrantState(state), hold_until)
        except ValueError as exc:
            raise GrantStoreError(f"{bad}: {exc}") from exc


def _encode(grant: Grant) -> tuple[str, str, str, float | None]:
    return (grant.identity, str(grant.address), grant.state.value, grant.hold_until)


class PersistentAllocator:
    """AddressAllocator that writes every change to a GrantStore before answering.

    The manager decides; this class only keeps the file in step:

    * ``allocate``: once the manager has granted, the identity's grant is
      written. If the write fails, the manager is put back as it was (the
      identity's previous grant, or none) and :class:`GrantNotStored` is
      raised, so the client is refused rather than given an address that a
      restart would forget.
    * ``put_on_hold`` and ``deallocate``: written unsynced (see the module
      docstring). The manager's change stands even if the write fails, and
      the failure is logged. Undoing would be worse (a
      grant kept active in memory never expires; a hold undone by freeing
      loses the identity's address), and raising would break a tunnel's
      close. The stale row errs on the safe side (see the module docstring)
      and the next :meth:`sweep` rewrites the table.

    Time is the manager's clock.
    """

    def __init__(self, manager: AddressManager, store: GrantStore) -> None:
        """Wrap ``manager`` and ``store`` as they are; :meth:`open` loads the file first."""
        self._manager = manager
        self._store = store
        self._dirty = False  # a swallowed write failure: the file needs a full rewrite

    @classmethod
    def open(
        cls,
        manager: AddressManager,
        path: Path,
        *,
        now: float | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> PersistentAllocator:
        """Open (or create) the store at ``path`` and restore ``manager`` from it.

        ``now`` defaults to the manager's clock. A grant stored as ACTIVE
        belonged to a tunnel that died with the old process: it becomes HELD
        until ``now + manager.hold_time``, so its identity gets the address
        back when it reconnects and nobody else gets it meanwhile. Holds that
        ended before ``now`` are dropped, and so are grants whose address this
        manager cannot grant (the prefixes or reserved addresses changed; each
        is logged). The file is then rewritten to exactly what was restored.
        """
        store = GrantStore(path, busy_timeout=busy_timeout)
        try:
            start = manager.now() if now is None else now
            kept: list[Grant] = []
            for stored in store.load():
                grant = stored
                if stored.state is GrantState.ACTIVE:
                    until = start + manager.hold_time
                    grant = Grant(stored.identity, stored.address, GrantState.HELD, until)
                elif stored.hold_until is not None and stored.hold_until < start:
                    continue  # the hold ended while the gateway was down
                if not manager.is_usable(grant.address):
                    log.warning(
                        "dropping the stored grant of %s to %s: not an address of this allocator",
                        grant.identity,
                        grant.address,
                    )
                    continue
                kept.append(grant)
            manager.restore(kept)
            store.replace_all(kept)
        except BaseException:
            store.close()
            raise
        return cls(manager, store)

    @property
    def manager(self) -> AddressManager:
        """The in-memory allocator (do not change it directly: the file would not follow)."""
        return self._manager

    @property
    def store(self) -> GrantStore:
        """The grant file."""
        return self._store

    @property
    def isd_as(self) -> IsdAs:
        """The allocator's own ISD-AS."""
        return self._manager.isd_as

    # --- AddressAllocator ---------------------------------------------------------

    def allocate(self, isd_as: IsdAs, prefix: IPNetwork, claims: Token) -> AddressAllocation:
        """Grant as the manager does; the grant is on disk before this returns."""
        identity = claims.id()
        before = self._manager.grant_of(identity)
        allocation = self._manager.allocate(isd_as, prefix, claims)
        after = self._manager.grant_of(identity)
        if after == before:
            return allocation  # the same active grant again: the file already has it
        try:
            if after is None:  # pragma: no cover - only with a clock that jumps mid-call
                self._store.remove(identity)
            else:
                self._store.put(after)
        except GrantStoreError as exc:
            self._undo(identity, before)
            raise GrantNotStored(
                f"{allocation.address} not granted: it could not be stored ({exc})"
            ) from exc
        return allocation

    def put_on_hold(self, allocation_id: AddressAllocationId) -> bool:
        """Hold as the manager does, then store the hold (a failure is logged)."""
        if not self._manager.put_on_hold(allocation_id):
            return False
        self._write_quietly(allocation_id.id)
        return True

    def deallocate(self, allocation_id: AddressAllocationId) -> bool:
        """Free as the manager does, then delete the row (a failure is logged)."""
        if not self._manager.deallocate(allocation_id):
            return False
        self._write_quietly(allocation_id.id)
        return True

    # --- inspection and upkeep ---------------------------------------------------------

    def free_count(self, version: int) -> int:
        """As :meth:`AddressManager.free_count`."""
        return self._manager.free_count(version)

    def grants(self) -> list[Grant]:
        """As :meth:`AddressManager.grants`: the manager's view, not the file's."""
        return self._manager.grants()

    def sweep(self) -> int:
        """Delete the stored holds that have ended; return how many rows were deleted.

        Call it now and then (e.g. every hold time). After a write failure that
        was logged, it rewrites the whole table from the manager instead (and
        returns 0). Raises :class:`GrantStoreError`.
        """
        if self._dirty:
            self._store.replace_all(self._manager.grants())
            self._dirty = False
            return 0
        return self._store.sweep(self._manager.now())

    def hold_all(self) -> None:
        """Gateway shutdown: every ACTIVE grant becomes HELD from now, and the file says so.

        Raises :class:`GrantStoreError` if the file cannot be written; the
        holds still start at the next :meth:`open` then, from its ``now``.
        """
        for grant in self._manager.grants():
            if grant.state is GrantState.ACTIVE:
                self._manager.put_on_hold(AddressAllocationId(self._manager.isd_as, grant.identity))
        self._store.replace_all(self._manager.grants())
        self._dirty = False

    def close(self) -> None:
        """Close the file (without holding anything: see :meth:`hold_all`)."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _write_quietly(self, identity: str) -> None:
        """Store a hold or a deallocation, unsynced: losing it errs on the safe side."""
        grant = self._manager.grant_of(identity)
        try:
            if grant is None:
                self._store.remove(identity, sync=False)
            else:
                self._store.put(grant, sync=False)
        except GrantStoreError as exc:
            self._dirty = True
            log.warning("grant of %s not stored; rewriting at the next sweep: %s", identity, exc)

    def _undo(self, identity: str, before: Grant | None) -> None:
        """Put the identity's grant back to ``before`` after a failed write."""
        if before is None:
            self._manager.deallocate(AddressAllocationId(self._manager.isd_as, identity))
            return
        # The refused allocate only freed the identity's own address (and holds
        # that ended), so ``before`` cannot clash with anyone else's grant.
        others = [g for g in self._manager.grants() if g.identity != identity]
        self._manager.restore([*others, before])
