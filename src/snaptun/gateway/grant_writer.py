"""Writes the grant changes the tunnel state machines return (the gateway's persistence effect).

The core decides (:class:`~snaptun.core.allocator.AddressManager` returns a
:class:`~snaptun.core.allocator.GrantChange` for every grant and hold); this
object carries the write out on the grant store, as
:data:`snaptun.aio.server.GrantStore` asks:

* a grant is written before the client is answered; a failed write returns
  False, the machine undoes the grant and refuses it, and the file is as
  before (the transaction rolled back);
* a hold that cannot be written is logged and leaves the file stale on the
  safe side (an active row becomes a hold at the next start); :meth:`sweep`
  then rewrites the whole table from the manager.
"""

from __future__ import annotations

import logging

from snaptun.core.allocator import GrantChange
from snaptun.gateway.store import GrantStoreError, PersistentAllocator

__all__ = ["GrantWriter"]

log = logging.getLogger(__name__)


class GrantWriter:
    """The ``store`` hook of :class:`~snaptun.aio.server.Server` over a grant file."""

    def __init__(self, persistent: PersistentAllocator) -> None:
        self._persistent = persistent
        self.dirty = False
        """A write failed since the last sweep: the file needs a full rewrite."""

    def __call__(self, change: GrantChange) -> bool:
        """Write ``change``; False (logged) if the file could not be written."""
        store = self._persistent.store
        try:
            if change.after is None:
                store.remove(change.identity)
            else:
                store.put(change.after)
        except GrantStoreError as exc:
            self.dirty = True
            log.warning("grant of %s not stored: %s", change.identity, exc)
            return False
        return True

    def sweep(self) -> int:
        """Delete ended holds from the file, or rewrite it whole after a failed write."""
        if self.dirty:
            self._persistent.store.replace_all(self._persistent.manager.grants())
            self.dirty = False
            return 0
        return self._persistent.sweep()
