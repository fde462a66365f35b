"""The token bucket: bursts, refill, and the bound over any window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snaptun.core.ratelimit import TokenBucket


def test_burst_then_refill_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert bucket.take(100.0) is True  # refill is capped at the burst
    assert sum(bucket.take(100.0) for _ in range(10)) == 2


def test_a_clock_that_steps_back_grants_nothing_extra() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0) is True
    assert bucket.take(5.0) is False
    assert bucket.take(10.5) is False
    assert bucket.take(11.0) is True


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bad_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(rate, burst, 0.0)


@given(
    rate=st.floats(min_value=0, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    granted = 0
    for step in steps:
        now += step
        granted += bucket.take(now)
    assert granted <= burst + rate * now + 1e-6
