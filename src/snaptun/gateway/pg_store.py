"""The grant store of a fleet of gateways: one PostgreSQL database shared by all.

``store = "postgresql://..."`` replaces the state directory's SQLite file. Each
gateway grants from its own pools (its *partition*, announced to the border
routers by prefix) and keeps its :class:`~snaptun.core.allocator.AddressManager`
as a fast local view; the database decides, inside one transaction per grant:

* ``address`` is UNIQUE: no address is granted or held twice, whatever the
  gateways' pools say (overlapping partitions are refused here, not trusted);
* ``identity`` is the PRIMARY KEY: an identity holds one grant fleet-wide. A
  grant upserts the identity's row, so a grant on gateway B *moves* X's row
  from A to B (the newest wins), and its old address is free at once.

A trigger on that move sends ``NOTIFY snaptun_grants`` with the identity, the
old and the new gateway and the row's generation (a sequence number). Each
gateway LISTENs on a dedicated connection; the gateway that lost the grant
closes its tunnel of that identity with code 0, "replaced by a newer tunnel",
and drops the identity's grant from its manager. A notification missed while
the listener was reconnecting is made up by a query for every local grant
when it is back.

Holds: a tunnel that ends writes its row as held (only if the row still names
this gateway, so it never undoes a move). A gateway that dies leaves its rows
as they were; a gateway that starts with those addresses in its pools (the
same gateway restarted, or a replacement for its partition) loads them as
holds, so the identity gets its address back and nobody else does. A hold
that has ended is deleted when its address is granted again, or by a sweep.

Losing the database: a grant that cannot be written within ``timeout``
seconds is :attr:`~snaptun.core.state.StoreFailure.UNAVAILABLE` (the setup is
closed with code 5, "grant store unavailable", and counted); established
tunnels forward on, as the data plane never reads the database. The pool and
the listener reconnect with backoff. Holds that could not be written are
rewritten by the next sweep.

Clocks: ``hold_until`` is unix time from the writing gateway's clock, so the
gateways' clocks must agree to well within a hold time (NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from snaptun.core.addressing import IPNetwork
from snaptun.core.allocator import (
    AddressAllocationId,
    AddressManager,
    Grant,
    GrantChange,
    GrantState,
)
from snaptun.core.state import Stored, StoreFailure
from snaptun.gateway.store import GrantStoreError

__all__ = [
    "CHANNEL",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TIMEOUT",
    "Moved",
    "PgGrantStore",
    "PgGrantWriter",
]

log = logging.getLogger(__name__)

CHANNEL: Final = "snaptun_grants"
"""The NOTIFY channel of grant moves between gateways."""
DEFAULT_POOL_SIZE: Final = 4
"""Connections one gateway keeps to the database at most (plus one listener)."""
DEFAULT_TIMEOUT: Final = 1.0
"""Seconds a grant write may wait for a connection and its transaction (below the setup's 3 s)."""
_BACKOFF: Final = (0.1, 5.0)
"""First and longest wait before the listener reconnects (doubling in between)."""

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS snaptun_grants (
        identity text PRIMARY KEY,
        address inet NOT NULL UNIQUE,
        state text NOT NULL CHECK (state IN ('active', 'held')),
        hold_until double precision,
        gateway text NOT NULL,
        generation bigint NOT NULL,
        CHECK ((state = 'held') = (hold_until IS NOT NULL))
    )""",
    "CREATE SEQUENCE IF NOT EXISTS snaptun_grant_generation",
    f"""CREATE OR REPLACE FUNCTION snaptun_grant_moved() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.gateway <> NEW.gateway THEN
            PERFORM pg_notify('{CHANNEL}', json_build_object(
                'identity', NEW.identity, 'from', OLD.gateway, 'to', NEW.gateway,
                'generation', NEW.generation)::text);
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE OR REPLACE TRIGGER snaptun_grant_moved AFTER UPDATE ON snaptun_grants
    FOR EACH ROW EXECUTE FUNCTION snaptun_grant_moved()""",
)
_SCHEMA_LOCK: Final = 0x736E6170  # advisory lock: gateways starting together create it once

_GRANT: Final = """INSERT INTO snaptun_grants
        (identity, address, state, hold_until, gateway, generation)
    VALUES (%(identity)s, %(address)s, 'active', NULL, %(gateway)s,
        nextval('snaptun_grant_generation'))
    ON CONFLICT (identity) DO UPDATE SET address = excluded.address, state = 'active',
        hold_until = NULL, gateway = excluded.gateway, generation = excluded.generation
    RETURNING generation"""
_FREE_ENDED_HOLD: Final = """DELETE FROM snaptun_grants
    WHERE address = %(address)s AND identity <> %(identity)s
        AND state = 'held' AND hold_until < %(now)s"""


@dataclass(frozen=True, slots=True)
class Moved:
    """A notification: ``identity``'s grant moved from gateway ``old`` to ``new``."""

    identity: str
    old: str
    new: str
    generation: int


class PgGrantStore:
    """The shared grant table, through a pool of connections (psycopg 3, async).

    ``gateway`` names this gateway in the rows it writes; it must be unique in
    the fleet and stable across restarts. Every method raises
    :class:`GrantStoreError` for a database failure, except :meth:`grant`,
    which answers (see there).
    """

    def __init__(self, url: str, gateway: str, pool: psycopg_pool.AsyncConnectionPool) -> None:
        self.url = url
        self.gateway = gateway
        self._pool = pool

    @classmethod
    async def open(
        cls,
        url: str,
        gateway: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> PgGrantStore:
        """Connect (waiting at most ``5 * timeout`` for a connection); create the schema."""
        pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            reconnect_timeout=3600.0,  # keep trying (with the pool's backoff) while down
        )
        try:
            await pool.open(wait=True, timeout=5 * timeout)
            async with pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    await conn.execute(statement)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise GrantStoreError(f"grant store {_redacted(url)}: open failed: {exc}") from exc
        return cls(url, gateway, pool)

    async def load(self, pools: Sequence[IPNetwork]) -> list[Grant]:
        """Every row whose address lies in ``pools``, whichever gateway wrote it."""
        query = """SELECT identity, host(address), state, hold_until
            FROM snaptun_grants WHERE address <<= ANY(%s::cidr[]) ORDER BY identity"""
        rows = await self._fetch("load", query, ([str(p) for p in pools],))
        return [
            Grant(str(i), ipaddress.ip_address(str(a)), GrantState(str(s)), h)
            for i, a, s, h in rows
        ]

    async def restart(self, kept: Iterable[Grant]) -> None:
        """At start-up: the rows of ``kept`` become this gateway's, as restored (held).

        A gateway that still named one of them is notified (the trigger), as
        for any grant that moves.
        """
        async with self._transaction("restart") as conn, conn.cursor() as cursor:
            await cursor.executemany(
                """UPDATE snaptun_grants SET state = %s, hold_until = %s, gateway = %s
                WHERE identity = %s AND address = %s""",
                [
                    (g.state.value, g.hold_until, self.gateway, g.identity, str(g.address))
                    for g in kept
                ],
            )

    async def grant(self, grant: Grant, now: float) -> int:
        """Write ``grant`` (active) as its identity's only row; return the row's generation.

        Raises :class:`GrantStoreError` if the address is another identity's
        (granted, or held until after ``now``), and lets psycopg's and the
        pool's errors through for the caller to tell "unavailable" apart.
        """
        params = {
            "identity": grant.identity,
            "address": str(grant.address),
            "gateway": self.gateway,
            "now": now,
        }
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(_FREE_ENDED_HOLD, params)
            try:
                cursor = await conn.execute(_GRANT, params)
            except pg_errors.UniqueViolation as exc:
                raise GrantStoreError(
                    f"{grant.address} is granted to or held for another identity in the fleet"
                ) from exc
            row = await cursor.fetchone()
        assert row is not None
        generation: int = row[0]
        return generation

    async def hold(self, grant: Grant) -> None:
        """Write a hold (or a deletion, ``grant.state`` aside) if the row is still ours."""
        async with self._transaction("hold") as conn:
            await conn.execute(
                """UPDATE snaptun_grants SET state = %s, hold_until = %s
                WHERE identity = %s AND gateway = %s AND address = %s""",
                (
                    grant.state.value,
                    grant.hold_until,
                    grant.identity,
                    self.gateway,
                    str(grant.address),
                ),
            )

    async def remove(self, identity: str) -> None:
        """Delete the identity's row if this gateway wrote it."""
        async with self._transaction("remove") as conn:
            await conn.execute(
                "DELETE FROM snaptun_grants WHERE identity = %s AND gateway = %s",
                (identity, self.gateway),
            )

    async def sweep(self, now: float) -> int:
        """Delete the holds (of any gateway) that ended before ``now``; return how many."""
        async with self._transaction("sweep") as conn:
            cursor = await conn.execute(
                "DELETE FROM snaptun_grants WHERE state = 'held' AND hold_until < %s", (now,)
            )
            return cursor.rowcount

    async def rewrite(self, grants: Iterable[Grant]) -> None:
        """After failed hold writes: this gateway's rows say what ``grants`` say."""
        grants = list(grants)
        async with self._transaction("rewrite") as conn:
            await conn.execute(
                "DELETE FROM snaptun_grants WHERE gateway = %s AND NOT identity = ANY(%s)",
                (self.gateway, [g.identity for g in grants]),
            )
            for grant in grants:
                await conn.execute(
                    """UPDATE snaptun_grants SET state = %s, hold_until = %s
                    WHERE identity = %s AND gateway = %s AND address = %s""",
                    (
                        grant.state.value,
                        grant.hold_until,
                        grant.identity,
                        self.gateway,
                        str(grant.address),
                    ),
                )

    async def hold_all(self, until: float) -> None:
        """Gateway shutdown: every active row of this gateway is held until ``until``."""
        async with self._transaction("hold_all") as conn:
            await conn.execute(
                """UPDATE snaptun_grants SET state = 'held', hold_until = %s
                WHERE gateway = %s AND state = 'active'""",
                (until, self.gateway),
            )

    async def moved_away(self, identities: Sequence[str]) -> list[Moved]:
        """Which of ``identities`` another gateway holds now (after a missed notification)."""
        rows = await self._fetch(
            "moved_away",
            """SELECT identity, gateway, generation FROM snaptun_grants
            WHERE identity = ANY(%s) AND gateway <> %s""",
            (list(identities), self.gateway),
        )
        return [Moved(str(i), self.gateway, str(g), int(n)) for i, g, n in rows]

    async def listen(
        self, on_moved: Callable[[Moved], None], on_connected: Callable[[], Awaitable[None]]
    ) -> None:
        """LISTEN for moves until cancelled; reconnect with backoff (logged once per outage).

        ``on_connected`` runs after every (re)connection, once LISTEN is in
        place, to make up for notifications missed meanwhile.
        """
        delay, down = _BACKOFF[0], False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if down:
                        log.warning("grant store listener reconnected")
                    delay, down = _BACKOFF[0], False
                    await on_connected()
                    async for note in conn.notifies():
                        moved = _parse(note.payload)
                        if moved is not None:
                            on_moved(moved)
            except (psycopg.Error, GrantStoreError, OSError) as exc:
                if not down:
                    log.warning("grant store listener lost (%s); reconnecting", exc)
                down = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF[1])

    async def close(self) -> None:
        """Close the pool (waits for connections in use)."""
        await self._pool.close()

    # --- internals ---------------------------------------------------------------------

    async def _fetch(self, what: str, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._transaction(what) as conn:
            cursor = await conn.execute(query, params)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
            return rows

    @contextlib.asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise GrantStoreError(
                f"grant store {_redacted(self.url)}: {what} failed: {exc}"
            ) from exc


def _parse(payload: str) -> Moved | None:
    try:
        data = json.loads(payload)
        return Moved(
            str(data["identity"]), str(data["from"]), str(data["to"]), int(data["generation"])
        )
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed %s notification: %r", CHANNEL, payload[:200])
        return None


def _redacted(url: str) -> str:
    """The URL without a password (it may be in the configuration)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://..."
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in sorted(info.items()))


class PgGrantWriter:
    """The ``store`` hook of :class:`~snaptun.aio.server.Server` over the shared store.

    A grant is awaited (the answer waits for the commit); a hold or a
    deletion is written in the background, in order per identity is not
    needed (each only touches a row that still names this gateway). The
    writer remembers the generation of each grant it wrote, so a late
    notification of an older move never evicts a newer local tunnel.
    """

    def __init__(
        self,
        store: PgGrantStore,
        manager: AddressManager,
        clock: Callable[[], float],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_unavailable: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._manager = manager
        self._clock = clock
        self._timeout = timeout
        self._on_unavailable = on_unavailable
        self._generations: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.dirty = False
        """A hold write failed since the last sweep: this gateway's rows need a rewrite."""

    def __call__(self, change: GrantChange) -> Stored | Awaitable[Stored]:
        """A grant: an awaitable of its outcome. A hold or deletion: True, written behind."""
        after = change.after
        if after is not None and after.state is GrantState.ACTIVE:
            return self._grant(after)
        task = asyncio.ensure_future(self._quietly(change.identity, after))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def _grant(self, grant: Grant) -> Stored:
        try:
            async with asyncio.timeout(self._timeout):
                generation = await self._store.grant(grant, self._clock())
        except GrantStoreError as exc:
            log.info("grant of %s refused by the store: %s", grant.identity, exc)
            return False
        except (psycopg.Error, psycopg_pool.PoolTimeout, TimeoutError, OSError) as exc:
            self._on_unavailable()
            log.warning("grant of %s not stored: grant store unavailable (%s)", grant.identity, exc)
            return StoreFailure.UNAVAILABLE
        self._generations[grant.identity] = generation
        return True

    async def _quietly(self, identity: str, grant: Grant | None) -> None:
        try:
            if grant is None:
                self._generations.pop(identity, None)
                await self._store.remove(identity)
            else:
                await self._store.hold(grant)
        except GrantStoreError as exc:
            self.dirty = True
            log.warning("hold of %s not stored; rewriting at the next sweep: %s", identity, exc)

    def moved(self, moved: Moved) -> bool:
        """A notification: True if it takes a grant of this gateway (then it is dropped here)."""
        if moved.old != self._store.gateway or moved.new == self._store.gateway:
            return False
        if self._generations.get(moved.identity, -1) > moved.generation:
            return False  # our own grant is newer than this move
        self._generations.pop(moved.identity, None)
        self._manager.deallocate(AddressAllocationId(self._manager.isd_as, moved.identity))
        return True

    async def missed(self) -> list[Moved]:
        """The moves of local grants that happened while nobody listened."""
        local = [g.identity for g in self._manager.grants()]
        return await self._store.moved_away(local) if local else []

    async def sweep(self) -> int:
        """Delete ended holds, or rewrite this gateway's rows after a failed hold write."""
        if self.dirty:
            await self._store.rewrite(self._manager.grants())
            self.dirty = False
            return 0
        return await self._store.sweep(self._clock())

    async def drain(self) -> None:
        """Wait for the hold writes under way (at shutdown, before the pool closes)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self._timeout * 2)
