"""A hashed timing wheel, sans-I/O: many deadlines, one wake-up source.

Why: a gateway with 20,000 idle tunnels has 20,000 keep-alive deadlines. One
event-loop timer handle per connection costs an allocation per re-arm and a
heap of handles; the wheel keeps every deadline in a slot of a fixed ring and
lets one timer of the event loop (``snaptun.aio.timers``) wake for the
earliest occupied slot, so the cost per idle connection is one set entry and
nothing runs while nothing is due.

Time is passed in (seconds on any monotonic clock); nothing here reads a
clock or sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["TimerWheel"]

K = TypeVar("K", bound=Hashable)


class TimerWheel(Generic[K]):
    """Deadlines keyed by hashable keys, fired in ticks of ``resolution`` seconds.

    Invariants:

    * a key has at most one deadline: :meth:`arm` again replaces it;
    * :meth:`expire` returns each armed deadline's key exactly once, and only
      when ``now >= deadline`` (never early); it is returned by the first
      :meth:`expire` whose ``now`` reaches the end of the deadline's tick, so
      at most ``resolution`` late relative to the calls made;
    * a deadline cancelled, or replaced by a new :meth:`arm`, never fires;
    * :meth:`arm` and :meth:`cancel` are O(1); :meth:`expire` costs the slots
      it passes (at most ``slots``) plus the keys it looks at.

    A deadline is stored under its tick ``t``, the first multiple of
    ``resolution`` at or after it; ``t * resolution <= now`` means due. Slot
    ``t % slots`` holds the keys of tick ``t``, and of later rounds, which stay
    until their own tick comes.
    """

    __slots__ = ("_done", "_resolution", "_slots", "_ticks")

    def __init__(self, resolution: float = 0.1, slots: int = 512, now: float = 0.0) -> None:
        if not (math.isfinite(resolution) and resolution > 0):
            raise ValueError(f"resolution must be a positive number of seconds, not {resolution}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self._resolution = float(resolution)
        self._slots: list[set[K]] = [set() for _ in range(slots)]
        self._ticks: dict[K, int] = {}
        self._done = self._last_due_tick(now)
        """Every tick up to this one has been expired."""

    @property
    def resolution(self) -> float:
        """Seconds per tick: how late, at most, a deadline fires after :meth:`expire` passes it."""
        return self._resolution

    def __len__(self) -> int:
        return len(self._ticks)

    def __contains__(self, key: object) -> bool:
        return key in self._ticks

    def _tick_of(self, deadline: float) -> int:
        """The first tick whose time is at or after ``deadline`` (exact in float terms)."""
        res = self._resolution
        tick = math.ceil(deadline / res)
        while tick * res < deadline:
            tick += 1
        while (tick - 1) * res >= deadline:
            tick -= 1
        return tick

    def _last_due_tick(self, now: float) -> int:
        """The last tick whose time is at or before ``now``."""
        res = self._resolution
        tick = math.floor(now / res)
        while tick * res > now:
            tick -= 1
        while (tick + 1) * res <= now:
            tick += 1
        return tick

    def arm(self, key: K, deadline: float) -> float:
        """Fire ``key`` once at or after ``deadline`` (replacing its earlier deadline).

        Returns the time from which :meth:`expire` returns it (its tick's time):
        what a driver's single timer must wake for at the latest.
        """
        if not math.isfinite(deadline):
            raise ValueError(f"deadline must be finite, not {deadline}")
        self.cancel(key)
        tick = max(self._tick_of(deadline), self._done + 1)
        self._ticks[key] = tick
        self._slots[tick % len(self._slots)].add(key)
        return tick * self._resolution

    def cancel(self, key: K) -> bool:
        """Forget ``key``'s deadline; False if it had none (fired, cancelled or never armed)."""
        tick = self._ticks.pop(key, None)
        if tick is None:
            return False
        self._slots[tick % len(self._slots)].discard(key)
        return True

    def expire(self, now: float) -> list[K]:
        """The keys whose deadlines are due at ``now``, each removed from the wheel.

        In no promised order. A ``now`` earlier than a previous one returns
        nothing (time does not go back).
        """
        target = self._last_due_tick(now)
        if target <= self._done:
            return []
        slots = self._slots
        ticks = self._ticks
        span = min(target - self._done, len(slots))
        fired: list[K] = []
        for tick in range(self._done + 1, self._done + span + 1):
            index = tick % len(slots)
            slot = slots[index]
            if not slot:
                continue
            due = [key for key in slot if ticks[key] <= target]
            for key in due:
                del ticks[key]
            fired.extend(due)
            if len(due) == len(slot):
                # A fresh set: a set keeps the table a burst grew, and with every
                # slot used once per round that was ~1 KiB per key in all.
                slots[index] = set()
            else:
                slot.difference_update(due)
        self._done = target
        return fired

    def next_wakeup(self) -> float | None:
        """A time at or before which the next key becomes due (None: the wheel is empty).

        The tick time of the first occupied slot after the last expired tick:
        never later than the earliest deadline's tick, possibly earlier when
        that slot holds only keys of a later round (a wake-up that finds
        nothing due).
        """
        if not self._ticks:
            return None
        slots = self._slots
        for tick in range(self._done + 1, self._done + len(slots) + 1):
            if slots[tick % len(slots)]:
                return tick * self._resolution
        raise AssertionError("keys without a slot")  # pragma: no cover - invariant
