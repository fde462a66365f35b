"""One event-loop timer for many deadlines: the asyncio driver of :class:`TimerWheel`.

Connections arm their keep-alives here instead of holding a
``loop.call_later`` handle each: the wheel holds the deadlines, and one
``loop.call_at`` handle per event loop wakes for the earliest occupied tick.
With no deadline armed nothing is scheduled at all.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Final

from snaptun.core.timers import TimerWheel

__all__ = ["LoopTimers", "loop_timers"]

log = logging.getLogger(__name__)

RESOLUTION: Final = 0.05
"""Seconds per wheel tick: how late a deadline may fire (keep-alives are seconds apart)."""
SLOTS: Final = 1024
"""Ticks per round of the wheel (51 s at the default resolution: longer than any keep-alive)."""

Callback = Callable[[], None]


class LoopTimers:
    """Deadlines of one event loop, each a callback fired once (see :class:`TimerWheel`).

    A callback is its own key: arming it again replaces its deadline, and
    bound methods of one object compare equal, so ``cancel(obj.method)``
    cancels what ``arm(obj.method, t)`` armed. Callbacks must not raise
    (an exception is logged and the others still run).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self._loop = loop
        self._wheel: TimerWheel[Callback] = TimerWheel(resolution, SLOTS, now=loop.time())
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0

    def __len__(self) -> int:
        return len(self._wheel)

    @property
    def scheduled(self) -> bool:
        """Whether the loop holds a wake-up for this wheel (False whenever it is empty)."""
        return self._handle is not None

    def arm(self, callback: Callback, delay: float) -> None:
        """Call ``callback`` once, ``delay`` seconds from now or a tick later."""
        due = self._wheel.arm(callback, self._loop.time() + delay)
        if self._handle is None or due < self._handle_at:
            self._schedule(due)

    def cancel(self, callback: Callback) -> None:
        """Forget ``callback``'s deadline, if it has one."""
        self._wheel.cancel(callback)
        if not self._wheel and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_at = at
        self._handle = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        # The loop may run a timer up to its clock resolution early; the tick is due
        # by then (as qh3 does for its own timer), else this would spin until it is.
        now = max(self._loop.time(), self._handle_at)
        for callback in self._wheel.expire(now):
            try:
                callback()
            except Exception:
                log.exception("timer callback %r failed", callback)
        wakeup = self._wheel.next_wakeup()
        if wakeup is not None and (self._handle is None or wakeup < self._handle_at):
            self._schedule(wakeup)


_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTimers] = (
    weakref.WeakKeyDictionary()
)


def loop_timers(loop: asyncio.AbstractEventLoop | None = None) -> LoopTimers:
    """The :class:`LoopTimers` of ``loop`` (default: the running loop), made on first use."""
    loop = loop or asyncio.get_running_loop()
    timers = _TIMERS.get(loop)
    if timers is None:
        timers = _TIMERS[loop] = LoopTimers(loop)
    return timers
