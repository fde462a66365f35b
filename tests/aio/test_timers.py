"""The event-loop driver of the timing wheel: one loop handle, callbacks fired once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snaptun.aio.timers import LoopTimers, loop_timers


async def test_callbacks_fire_once_never_early_and_the_loop_handle_goes_when_empty() -> None:
    loop = asyncio.get_running_loop()
    timers = LoopTimers(loop, resolution=0.01)
    fired: list[tuple[str, float]] = []
    start = loop.time()
    timers.arm(lambda: fired.append(("a", loop.time())), 0.05)
    timers.arm(lambda: fired.append(("b", loop.time())), 0.02)
    assert timers.scheduled
    await asyncio.sleep(0.2)
    assert [name for name, _ in fired] == ["b", "a"]
    # never before its deadline, give or take the loop clock's own resolution
    assert fired[0][1] - start >= 0.02 - 0.002
    assert fired[1][1] - start >= 0.05 - 0.002
    assert len(timers) == 0
    assert not timers.scheduled  # nothing armed: nothing scheduled on the loop


async def test_cancel_and_rearm_by_the_same_bound_method() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def hit(self) -> None:
            self.n += 1

    timers = LoopTimers(asyncio.get_running_loop(), resolution=0.01)
    first, second = Counter(), Counter()
    timers.arm(first.hit, 0.03)
    timers.arm(first.hit, 0.06)  # replaces: one firing only
    timers.arm(second.hit, 0.03)
    timers.cancel(second.hit)  # a fresh bound method of the same object cancels it
    await asyncio.sleep(0.15)
    assert (first.n, second.n) == (1, 0)
    timers.arm(first.hit, 0.02)
    timers.cancel(first.hit)
    assert not timers.scheduled
    await asyncio.sleep(0.05)
    assert first.n == 1


async def test_a_callback_can_rearm_itself_and_a_failing_one_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = LoopTimers(asyncio.get_running_loop(), resolution=0.01)
    ticks: list[int] = []

    def periodic() -> None:
        ticks.append(len(ticks))
        if len(ticks) < 3:
            timers.arm(periodic, 0.02)

    def broken() -> None:
        raise RuntimeError("boom")

    timers.arm(broken, 0.01)
    timers.arm(periodic, 0.01)
    with caplog.at_level(logging.ERROR, logger="snaptun.aio.timers"):
        await asyncio.sleep(0.3)
    assert ticks == [0, 1, 2]
    assert "boom" in caplog.text
    assert not timers.scheduled


async def test_one_wheel_per_loop() -> None:
    assert loop_timers() is loop_timers(asyncio.get_running_loop())
