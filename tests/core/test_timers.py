"""The timing wheel: each armed deadline fires once, never early; cancelled ones never."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snaptun.core.timers import TimerWheel


def test_a_deadline_fires_once_at_the_end_of_its_tick() -> None:
    wheel: TimerWheel[str] = TimerWheel(resolution=0.1, slots=8, now=0.0)
    due = wheel.arm("a", 0.25)
    assert due == pytest.approx(0.3)
    assert wheel.expire(0.25) == []  # its tick (0.3) has not ended: never before the tick
    assert wheel.expire(due) == ["a"]  # the tick's own time (in float terms) is due
    assert wheel.expire(0.5) == []
    assert "a" not in wheel
    assert len(wheel) == 0


def test_rearming_replaces_and_cancel_forgets() -> None:
    wheel: TimerWheel[str] = TimerWheel(resolution=1.0, slots=4, now=0.0)
    wheel.arm("a", 2.0)
    wheel.arm("a", 5.0)  # replaces: the old deadline never fires
    wheel.arm("b", 2.0)
    assert wheel.cancel("b") is True
    assert wheel.cancel("b") is False
    assert wheel.expire(4.0) == []
    assert wheel.expire(5.0) == ["a"]


def test_deadlines_beyond_one_round_wait_for_their_own_tick() -> None:
    wheel: TimerWheel[int] = TimerWheel(resolution=1.0, slots=4, now=0.0)
    wheel.arm(1, 1.0)
    wheel.arm(5, 5.0)  # same slot as tick 1, next round
    assert wheel.expire(1.0) == [1]
    assert wheel.next_wakeup() is not None
    assert wheel.expire(4.0) == []
    assert wheel.expire(5.0) == [5]
    assert wheel.next_wakeup() is None


def test_a_jump_far_ahead_fires_everything_due_and_keeps_the_rest() -> None:
    wheel: TimerWheel[int] = TimerWheel(resolution=0.5, slots=4, now=0.0)
    for key in range(20):
        wheel.arm(key, key * 1.0)
    assert sorted(wheel.expire(12.0)) == list(range(13))
    assert sorted(wheel.expire(100.0)) == list(range(13, 20))


def test_a_past_deadline_fires_at_the_next_expire() -> None:
    wheel: TimerWheel[str] = TimerWheel(resolution=1.0, slots=8, now=10.0)
    assert wheel.arm("late", 3.0) == 11.0
    assert wheel.expire(10.5) == []
    assert wheel.expire(11.0) == ["late"]


def test_next_wakeup_is_never_after_the_earliest_due_time() -> None:
    wheel: TimerWheel[str] = TimerWheel(resolution=0.1, slots=16, now=0.0)
    assert wheel.next_wakeup() is None
    wheel.arm("a", 0.72)
    wheel.arm("b", 0.31)
    wakeup = wheel.next_wakeup()
    assert wakeup is not None
    assert wakeup <= 0.4 + 1e-9
    assert wheel.expire(wakeup) == ["b"]


def test_time_going_back_fires_nothing() -> None:
    wheel: TimerWheel[str] = TimerWheel(resolution=1.0, slots=8, now=0.0)
    wheel.arm("a", 3.0)
    assert wheel.expire(2.0) == []
    assert wheel.expire(1.0) == []
    assert wheel.expire(3.0) == ["a"]


@pytest.mark.parametrize(("resolution", "slots"), [(0.0, 8), (-1.0, 8), (float("nan"), 8), (1, 0)])
def test_bad_settings_are_refused(resolution: float, slots: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        TimerWheel(resolution, slots)


def test_a_non_finite_deadline_is_refused() -> None:
    wheel: TimerWheel[str] = TimerWheel()
    with pytest.raises(ValueError, match="finite"):
        wheel.arm("a", float("inf"))


_KEYS = st.integers(min_value=0, max_value=7)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), _KEYS, st.floats(min_value=0.0, max_value=60.0)),
        st.tuples(st.just("cancel"), _KEYS, st.just(0.0)),
        st.tuples(st.just("advance"), st.just(0), st.floats(min_value=0.0, max_value=7.0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=_OPS,
    resolution=st.sampled_from([0.01, 0.1, 0.25, 1.0, 3.0]),
    slots=st.integers(min_value=1, max_value=16),
    start=st.floats(min_value=0.0, max_value=1e6),
)
def test_every_armed_deadline_fires_once_never_early_cancelled_never(
    ops: list[tuple[str, int, float]], resolution: float, slots: int, start: float
) -> None:
    """Model: the last deadline armed per key, unless cancelled, fires exactly once.

    It fires at the first ``expire`` at or after the end of its tick, never
    before the deadline itself; by the final far-ahead ``expire`` every live
    deadline has fired.
    """
    wheel: TimerWheel[int] = TimerWheel(resolution, slots, now=start)
    now = start
    pending: dict[int, float] = {}  # the model: key -> deadline that must still fire
    latest: dict[int, float] = {}  # key -> when it must have fired by (a tick after due)
    fired: list[tuple[int, float]] = []
    for op, key, value in ops:
        if op == "arm":
            deadline = start + value
            wheel.arm(key, deadline)
            pending[key] = deadline
            latest[key] = max(deadline, now) + resolution
        elif op == "cancel":
            assert wheel.cancel(key) is (key in pending)
            pending.pop(key, None)
        else:
            now += value
            for got in wheel.expire(now):
                assert got in pending, "a cancelled, replaced or fired deadline fired"
                assert pending[got] <= now, "fired early"
                fired.append((got, pending.pop(got)))
            for key_left in pending:
                # due a whole tick ago (or armed late a tick ago) yet not fired: lost
                assert latest[key_left] > now - 1e-9 * max(1.0, now), key_left
        assert len(wheel) == len(pending)
    final = now + 100.0 + slots * resolution
    for got in wheel.expire(final):
        assert got in pending
        assert pending.pop(got) <= final
    assert pending == {}
    assert len(wheel) == 0
    assert wheel.next_wakeup() is None
