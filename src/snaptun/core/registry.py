"""Which live tunnel uses each identity's grant: one tunnel per grant, the newest wins.

An identity has at most one grant (:mod:`snaptun.core.allocator`), but it may
open several tunnels: a client that roams, restarts, or two instances sharing
one token. Handing the one grant to all of them breaks the gateway's routing
(one address, several tunnels) and its holds (the first tunnel to end would
put on hold an address that another still uses). So, as WireGuard-style
roaming does, the newest tunnel takes the grant over and the older one is
closed.

Invariants (tested with a hypothesis state machine together with the
allocator and :class:`~snaptun.core.state.TunnelStateMachine`):

* an identity's grant is used by at most one live tunnel, its *holder*;
* a tunnel that is granted an address becomes the holder at once, in the same
  call, and the previous holder (if any) is told to close before anything
  else can run: there is no instant at which both count as live;
* only the holder may put the grant on hold when it ends; a replaced tunnel
  ends without touching the grant.

The registry holds one entry per identity with a live assigned tunnel, so it
is bounded by the number of live tunnels.

``TunnelRegistry(exclusive=False)`` is for diagnostics that mirror the
reference (``snaptun echo-server``, where every client shares one static
token and so one identity): tunnels of one identity then share its grant, and
the grant goes on hold when the last of them ends. A gateway never uses it.

Sans-I/O: holders are told through a plain method call.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["GrantHolder", "TunnelRegistry"]


class GrantHolder(Protocol):
    """A tunnel that can be told a newer tunnel of its identity took its grant over."""

    def replaced(self) -> None:
        """Close for good, without putting the grant on hold (the newer tunnel uses it)."""
        ...


class TunnelRegistry:
    """Maps each identity to the one live tunnel that uses its grant."""

    def __init__(self, *, exclusive: bool = True) -> None:
        self.exclusive = exclusive
        """Newest wins (True); False lets tunnels of one identity share its grant."""
        self._holders: dict[str, GrantHolder] = {}
        self._sharing: dict[str, set[GrantHolder]] = {}  # exclusive=False: the live users
        self.replacements = 0
        """How many tunnels were replaced by a newer one (a plain counter for metrics)."""

    def claim(self, identity: str, holder: GrantHolder) -> None:
        """Make ``holder`` the user of ``identity``'s grant; the previous one is replaced.

        The previous holder's :meth:`GrantHolder.replaced` runs before this
        returns, after the registry already names the new holder, so a
        replaced tunnel that ends at once cannot release the grant.
        """
        if not self.exclusive:
            self._sharing.setdefault(identity, set()).add(holder)
            self._holders[identity] = holder
            return
        previous = self._holders.get(identity)
        self._holders[identity] = holder
        if previous is not None and previous is not holder:
            self.replacements += 1
            previous.replaced()

    def release(self, identity: str, holder: GrantHolder) -> bool:
        """``holder`` ends; True if it was the holder (then the caller holds the grant)."""
        if not self.exclusive:
            users = self._sharing.get(identity)
            if users is None or holder not in users:
                return False
            users.discard(holder)
            if users:
                return False
            del self._sharing[identity]
            self._holders.pop(identity, None)
            return True
        if self._holders.get(identity) is holder:
            del self._holders[identity]
            return True
        return False

    def evict(self, identity: str) -> bool:
        """Another gateway took ``identity``'s grant over: its local holder is replaced.

        True if there was a holder; it no longer counts as one when its
        :meth:`GrantHolder.replaced` runs, so it ends without holding the grant.
        """
        holders = self._holders.pop(identity, None)
        self._sharing.pop(identity, None)
        if holders is None:
            return False
        self.replacements += 1
        holders.replaced()
        return True

    def holder_of(self, identity: str) -> GrantHolder | None:
        """The live tunnel that uses ``identity``'s grant, if any."""
        return self._holders.get(identity)

    def __len__(self) -> int:
        return len(self._holders)
