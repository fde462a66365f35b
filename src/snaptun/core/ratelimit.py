"""A token bucket, sans-I/O: the caller passes ``now`` (seconds on a monotonic clock).

Used where the gateway answers a client's input with work of its own (SCMP
error replies), so that a client cannot make it burn CPU on replies: at most
``burst`` at once, then ``rate`` per second. Constant memory and no
allocation per call, so it can sit on the per-packet path.
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; :meth:`take` spends one.

    Over any interval of ``t`` seconds at most ``burst + rate * t`` takes succeed.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"rate must be a finite number >= 0, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def give_back(self) -> None:
        """Return one token (never beyond the burst): what was spent turned out harmless."""
        self._tokens = min(float(self.burst), self._tokens + 1.0)

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (and nothing spent) otherwise."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
