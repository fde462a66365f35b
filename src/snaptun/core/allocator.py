"""Address allocation: grants of SCION end-host addresses by token identity.

:class:`AddressAllocator` is what a server needs; :class:`AddressManager` is the
in-memory implementation for one ISD-AS with IPv4 and/or IPv6 prefixes.

A grant belongs to one identity (``Token.id()``) and is *active* or *held*::

    (free) --allocate--> active --put_on_hold--> held --hold ends (now > hold_until)--> (free)
                           ^                       |
                           +------allocate---------+   (same identity: "any" of the
                                                        family, or the held address)
    active/held --deallocate--> (free)
    active/held --allocate a different address (granted)--> old address freed

An identity has at most one grant. A failed ``allocate`` changes nothing: the
old grant is freed only once the new address has been granted. Holds expire
lazily: every public call first frees the holds that ended before its ``now``.
Refusals raise :class:`~snaptun.errors.AddressAllocationError` subclasses:
``UnsupportedIsdAs``, ``NoAddressesAvailable`` (pool of the family exhausted or
absent) and ``AddressUnavailable`` (outside the pools, not a host prefix, or
granted/held for another identity, or reserved).

Reserved addresses (the gateway's own, e.g. the source of its SCMP replies) are
never granted: asking for one is ``AddressUnavailable``, "any" skips them, and
``free_count`` does not count them.

The manager is sans-I/O and not thread-safe. It reads no clock and draws no
randomness of its own: every call takes ``now`` (a manager built with a
``clock`` lets callers omit it, as the reference-shaped :class:`AddressAllocator`
calls do), and random picks come from the injected ``rng``.

Persistence is the caller's effect: :meth:`AddressManager.grant` and
:meth:`AddressManager.hold` return the :class:`GrantChange` they made, which
the caller writes (the gateway, before it answers a grant) or, if the write
fails, undoes with :meth:`AddressManager.revert`.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import ipaddress
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from snaptun.core.addressing import EndhostAddress, IPAddress, IPNetwork, IsdAs
from snaptun.core.tokens import Token
from snaptun.errors import AddressUnavailable, NoAddressesAvailable, UnsupportedIsdAs

__all__ = [
    "DEFAULT_HOLD_TIME",
    "AddressAllocation",
    "AddressAllocationId",
    "AddressAllocator",
    "AddressManager",
    "Grant",
    "GrantAllocator",
    "GrantChange",
    "GrantState",
    "RandomSource",
    "TokenT_contra",
]

#: How long a grant is held after disconnect or expiry, in seconds (the reference's 600 s).
DEFAULT_HOLD_TIME: Final = 600.0

# Random picks tried before walking the pool from a random start. The walk takes
# at most (granted and reserved addresses of the family + 1) steps, so neither
# a huge IPv6 pool nor a nearly full IPv4 pool is ever enumerated.
_RANDOM_TRIES: Final = 16

TokenT_contra = TypeVar("TokenT_contra", bound=Token, contravariant=True)


@dataclass(frozen=True, slots=True)
class AddressAllocationId:
    """Names a grant: the allocator's ISD-AS and the identity it belongs to."""

    isd_as: IsdAs
    id: str


@dataclass(frozen=True, slots=True)
class AddressAllocation:
    """A granted address; ``id`` is what put_on_hold and deallocate take."""

    id: AddressAllocationId
    address: EndhostAddress


class AddressAllocator(Protocol[TokenT_contra]):
    """Grants end-host addresses by token identity."""

    def allocate(
        self, isd_as: IsdAs, prefix: IPNetwork, claims: TokenT_contra
    ) -> AddressAllocation:
        """Grant the host ``prefix`` (0.0.0.0/32 or ::/128: any of the family) in ``isd_as``.

        Raises AddressAllocationError subclasses. The answer never has a wildcard ISD-AS.
        """
        ...

    def put_on_hold(self, allocation_id: AddressAllocationId) -> bool:
        """Hold an active grant for its identity; False if there is no active grant."""
        ...

    def deallocate(self, allocation_id: AddressAllocationId) -> bool:
        """Free a grant at once; False if there is none."""
        ...


class RandomSource(Protocol):
    """Where random picks come from (``random.Random`` and ``SystemRandom`` fit)."""

    def randrange(self, stop: int, /) -> int:
        """A number in ``[0, stop)``."""
        ...


class GrantState(enum.Enum):
    """Whether a grant is in use or held for its identity."""

    ACTIVE = "active"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant, as ``AddressManager.grants()`` reports it and ``restore()`` takes it.

    ``hold_until`` (unix seconds) is set exactly when the state is HELD.
    """

    identity: str
    address: IPAddress
    state: GrantState
    hold_until: float | None = None

    def __post_init__(self) -> None:
        if (self.state is GrantState.HELD) != (self.hold_until is not None):
            raise ValueError("hold_until must be given exactly for held grants")


@dataclass(frozen=True, slots=True)
class GrantChange:
    """What one call did to an identity's grant: the caller persists ``after``.

    ``after`` None means the grant is gone (delete the identity's record);
    ``before`` is what :meth:`AddressManager.revert` puts back.
    """

    identity: str
    before: Grant | None
    after: Grant | None


class GrantAllocator(Protocol[TokenT_contra]):
    """What a tunnel state machine needs: explicit ``now``, changes returned for persistence."""

    def grant(
        self, now: float, isd_as: IsdAs, prefix: IPNetwork, claims: TokenT_contra
    ) -> tuple[AddressAllocation, GrantChange | None]:
        """As :meth:`AddressAllocator.allocate`; the change is None if nothing changed."""
        ...

    def hold(self, now: float, allocation_id: AddressAllocationId) -> GrantChange | None:
        """As :meth:`AddressAllocator.put_on_hold`; None if there was no active grant."""
        ...

    def revert(self, change: GrantChange) -> None:
        """Undo ``change`` (its write failed): the identity's grant is ``before`` again."""
        ...


@dataclass(frozen=True, slots=True)
class _Range:
    first: int  # first usable address, as an integer
    size: int  # number of usable addresses


class _Pool:
    """The usable addresses of one IP version, as sorted disjoint integer ranges."""

    def __init__(self, version: int, networks: Sequence[IPNetwork]) -> None:
        self.version = version
        ordered = sorted(networks, key=lambda n: int(n.network_address))
        for prev, nxt in itertools.pairwise(ordered):
            if int(prev.broadcast_address) >= int(nxt.network_address):
                raise ValueError(f"prefixes {prev} and {nxt} overlap")
        self._ranges = [r for r in map(_usable_range, ordered) if r.size > 0]
        self._firsts = [r.first for r in self._ranges]
        self._offsets: list[int] = []  # index of each range's first address in the pool
        total = 0
        for r in self._ranges:
            self._offsets.append(total)
            total += r.size
        self.size = total

    def contains(self, address: IPAddress) -> bool:
        value = int(address)
        i = bisect.bisect_right(self._firsts, value) - 1
        return i >= 0 and value < self._ranges[i].first + self._ranges[i].size

    def address_at(self, index: int) -> IPAddress:
        i = bisect.bisect_right(self._offsets, index) - 1
        value = self._ranges[i].first + (index - self._offsets[i])
        if self.version == 4:
            return ipaddress.IPv4Address(value)
        return ipaddress.IPv6Address(value)


def _usable_range(network: IPNetwork) -> _Range:
    first = int(network.network_address)
    size = network.num_addresses
    if network.version == 4 and network.prefixlen < 31:
        return _Range(first + 1, size - 2)  # no network and broadcast address
    if network.version == 6 and network.prefixlen < 127:
        return _Range(first + 1, size - 1)  # no subnet-router anycast address
    return _Range(first, size)


@dataclass(slots=True)
class _Entry:
    address: IPAddress
    hold_until: float | None  # None while active


class AddressManager:
    """In-memory allocator for one ISD-AS and a set of IPv4 and/or IPv6 prefixes.

    Usable addresses exclude the network and broadcast addresses of IPv4
    prefixes shorter than /31 and the subnet-router anycast address (the
    all-zero host part) of IPv6 prefixes shorter than /127, and the
    ``reserved`` addresses.

    ``clock`` gives the time for calls that omit ``now`` (without one, such a
    call is a ``TypeError``). ``rng`` draws the address "any" gets; without one
    the lowest free address is picked, which is predictable: a server passes
    ``random.SystemRandom()``.
    """

    def __init__(
        self,
        isd_as: IsdAs,
        prefixes: Sequence[IPNetwork],
        hold_time: float = DEFAULT_HOLD_TIME,
        clock: Callable[[], float] | None = None,
        rng: RandomSource | None = None,
        *,
        reserved: Iterable[IPAddress] = (),
    ) -> None:
        if isd_as.is_wildcard:
            raise ValueError(f"an allocator's ISD-AS must not be a wildcard: {isd_as}")
        if not math.isfinite(hold_time) or hold_time < 0:
            raise ValueError(f"hold_time must be a non-negative number of seconds: {hold_time}")
        for prefix in prefixes:
            if not isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise TypeError(f"expected an IPv4Network or IPv6Network, got {prefix!r}")
        reserved = frozenset(reserved)
        for address in reserved:
            if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise TypeError(f"expected an IPv4Address or IPv6Address, got {address!r}")
        self._isd_as = isd_as
        self._prefixes = tuple(prefixes)
        self._hold_time = float(hold_time)
        self._clock = clock
        self._rng = rng
        self._pools = {
            version: _Pool(version, [p for p in self._prefixes if p.version == version])
            for version in (4, 6)
        }
        self._reserved = reserved
        # Reserved addresses inside a pool, per version: never free, never granted.
        self._reserved_in_pool = {
            version: sum(1 for a in reserved if a.version == version and pool.contains(a))
            for version, pool in self._pools.items()
        }
        self._by_identity: dict[str, _Entry] = {}
        self._by_address: dict[IPAddress, str] = {}
        self._used = {4: 0, 6: 0}
        # (hold_until, identity); an entry is stale once the grant is no longer held until then.
        self._holds: list[tuple[float, str]] = []

    @property
    def isd_as(self) -> IsdAs:
        """The allocator's own ISD-AS; every answer carries it."""
        return self._isd_as

    @property
    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The configured prefixes."""
        return self._prefixes

    @property
    def hold_time(self) -> float:
        """Seconds a grant is held after put_on_hold."""
        return self._hold_time

    @property
    def reserved(self) -> frozenset[IPAddress]:
        """Addresses that are never granted."""
        return self._reserved

    def now(self) -> float:
        """The current time of the injected clock (unix seconds); TypeError without one."""
        if self._clock is None:
            raise TypeError("this AddressManager has no clock: pass now= to every call")
        return self._clock()

    def _at(self, now: float | None) -> float:
        return self.now() if now is None else now

    # --- GrantAllocator: explicit time, changes returned ------------------------------

    def grant(
        self, now: float, isd_as: IsdAs, prefix: IPNetwork, claims: Token
    ) -> tuple[AddressAllocation, GrantChange | None]:
        """Allocate at ``now``; the change is None when the same active grant is given again."""
        identity = claims.id()
        before = self.grant_of(identity, now=now)
        allocation = self.allocate(isd_as, prefix, claims, now=now)
        after = self.grant_of(identity, now=now)
        return allocation, (None if after == before else GrantChange(identity, before, after))

    def hold(self, now: float, allocation_id: AddressAllocationId) -> GrantChange | None:
        """Put on hold at ``now``; the change, or None if there was no active grant."""
        before = self.grant_of(allocation_id.id, now=now)
        if not self.put_on_hold(allocation_id, now=now):
            return None
        return GrantChange(allocation_id.id, before, self.grant_of(allocation_id.id, now=now))

    def revert(self, change: GrantChange) -> None:
        """Make ``change.before`` the identity's grant again (after a failed write).

        Raises ValueError, changing nothing, if that address now belongs to
        another identity (it cannot, right after the change: only the
        identity's own address was freed).
        """
        before = change.before
        if before is not None:
            owner = self._by_address.get(before.address)
            if owner is not None and owner != change.identity:
                raise ValueError(f"{before.address} is granted to another identity")
        if change.identity in self._by_identity:
            self._free(change.identity)
        if before is None:
            return
        self._by_identity[change.identity] = _Entry(before.address, before.hold_until)
        self._by_address[before.address] = change.identity
        self._used[before.address.version] += 1
        if before.hold_until is not None:
            heapq.heappush(self._holds, (before.hold_until, change.identity))

    # --- AddressAllocator ---------------------------------------------------------

    def allocate(
        self, isd_as: IsdAs, prefix: IPNetwork, claims: Token, *, now: float | None = None
    ) -> AddressAllocation:
        """Grant ``prefix`` (a host network; unspecified means any) to ``claims.id()``."""
        self._expire(self._at(now))
        if not isd_as.matches(self._isd_as):
            raise UnsupportedIsdAs(f"ISD-AS {isd_as} is not {self._isd_as} or a wildcard of it")
        if prefix.prefixlen != prefix.max_prefixlen:
            raise AddressUnavailable(f"only host addresses can be allocated, not {prefix}")
        identity = claims.id()
        wanted = prefix.network_address
        entry = self._by_identity.get(identity)
        if wanted.is_unspecified:
            if entry is not None and entry.address.version == wanted.version:
                address = entry.address
            else:
                address = self._pick_free(wanted.version)
        elif entry is not None and entry.address == wanted:
            address = wanted
        elif not self._pools[wanted.version].contains(wanted):
            raise AddressUnavailable(f"{wanted} is not in any prefix of {self._isd_as}")
        elif wanted in self._reserved:
            raise AddressUnavailable(f"{wanted} is reserved")
        elif wanted in self._by_address:
            raise AddressUnavailable(f"{wanted} is granted to or held for another identity")
        else:
            address = wanted
        self._grant(identity, address)
        return AddressAllocation(
            AddressAllocationId(self._isd_as, identity),
            EndhostAddress(self._isd_as, address),
        )

    def put_on_hold(self, allocation_id: AddressAllocationId, *, now: float | None = None) -> bool:
        """Hold the identity's active grant until ``now + hold_time``."""
        now = self._at(now)
        self._expire(now)
        entry = self._entry_for(allocation_id)
        if entry is None or entry.hold_until is not None:
            return False
        entry.hold_until = now + self._hold_time
        heapq.heappush(self._holds, (entry.hold_until, allocation_id.id))
        return True

    def deallocate(self, allocation_id: AddressAllocationId, *, now: float | None = None) -> bool:
        """Free the identity's grant (active or held) at once."""
        self._expire(self._at(now))
        if self._entry_for(allocation_id) is None:
            return False
        self._free(allocation_id.id)
        return True

    # --- inspection and persistence -------------------------------------------------

    def free_count(self, version: int, *, now: float | None = None) -> int:
        """Addresses of IP ``version`` (4 or 6) that are neither granted nor held."""
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, not {version}")
        self._expire(self._at(now))
        return self._pools[version].size - self._reserved_in_pool[version] - self._used[version]

    def is_usable(self, address: IPAddress) -> bool:
        """Whether ``address`` lies in a pool and is not reserved (granted or not)."""
        return self._pools[address.version].contains(address) and address not in self._reserved

    def grant_of(self, identity: str, *, now: float | None = None) -> Grant | None:
        """The grant of ``identity``, or None if it has none."""
        self._expire(self._at(now))
        entry = self._by_identity.get(identity)
        if entry is None:
            return None
        return _grant(identity, entry)

    def grants(self, *, now: float | None = None) -> list[Grant]:
        """A snapshot of every grant, sorted by identity."""
        self._expire(self._at(now))
        return [_grant(identity, entry) for identity, entry in sorted(self._by_identity.items())]

    def restore(self, grants: Iterable[Grant]) -> None:
        """Replace every grant with ``grants`` (e.g. a snapshot loaded after a restart).

        Raises ValueError, and changes nothing, if an address lies outside the
        pools or is reserved, or an identity or address appears twice. Holds
        that have already ended are freed on the next call, as usual.
        """
        by_identity: dict[str, _Entry] = {}
        by_address: dict[IPAddress, str] = {}
        for grant in grants:
            if not self._pools[grant.address.version].contains(grant.address):
                raise ValueError(f"{grant.address} is not a usable address of this allocator")
            if grant.address in self._reserved:
                raise ValueError(f"{grant.address} is reserved")
            if grant.identity in by_identity:
                raise ValueError(f"identity {grant.identity!r} has more than one grant")
            if grant.address in by_address:
                raise ValueError(f"address {grant.address} is granted more than once")
            by_identity[grant.identity] = _Entry(grant.address, grant.hold_until)
            by_address[grant.address] = grant.identity
        self._by_identity = by_identity
        self._by_address = by_address
        self._used = {4: 0, 6: 0}
        for address in by_address:
            self._used[address.version] += 1
        self._holds = [
            (entry.hold_until, identity)
            for identity, entry in by_identity.items()
            if entry.hold_until is not None
        ]
        heapq.heapify(self._holds)

    # --- internals ---------------------------------------------------------------------

    def _entry_for(self, allocation_id: AddressAllocationId) -> _Entry | None:
        # The reference hands out ids with the requested (possibly wildcard) ISD-AS.
        if not allocation_id.isd_as.matches(self._isd_as):
            return None
        return self._by_identity.get(allocation_id.id)

    def _expire(self, now: float) -> None:
        while self._holds and self._holds[0][0] < now:
            hold_until, identity = heapq.heappop(self._holds)
            entry = self._by_identity.get(identity)
            if entry is not None and entry.hold_until == hold_until:
                self._free(identity)

    def _pick_free(self, version: int) -> IPAddress:
        pool = self._pools[version]
        taken = self._by_address
        if self._used[version] + self._reserved_in_pool[version] >= pool.size:
            raise NoAddressesAvailable(f"no IPv{version} address available in {self._isd_as}")
        rng = self._rng
        if rng is not None:
            for _ in range(_RANDOM_TRIES):
                address = pool.address_at(rng.randrange(pool.size))
                if address not in taken and address not in self._reserved:
                    return address
        # Walk on from a random start (the first address without an rng): every
        # step that does not end the walk passes a granted or reserved address,
        # so it ends within used + reserved + 1 steps.
        start = rng.randrange(pool.size) if rng is not None else 0
        for step in range(pool.size):
            address = pool.address_at((start + step) % pool.size)
            if address not in taken and address not in self._reserved:
                return address
        raise AssertionError("free count and grants disagree")  # pragma: no cover

    def _grant(self, identity: str, address: IPAddress) -> None:
        entry = self._by_identity.get(identity)
        if entry is not None and entry.address == address:
            entry.hold_until = None  # reactivate; a stale heap entry is skipped later
            return
        if entry is not None:
            self._free(identity)
        self._by_identity[identity] = _Entry(address, None)
        self._by_address[address] = identity
        self._used[address.version] += 1

    def _free(self, identity: str) -> None:
        entry = self._by_identity.pop(identity)
        del self._by_address[entry.address]
        self._used[entry.address.version] -= 1


def _grant(identity: str, entry: _Entry) -> Grant:
    state = GrantState.ACTIVE if entry.hold_until is None else GrantState.HELD
    return Grant(identity, entry.address, state, entry.hold_until)
