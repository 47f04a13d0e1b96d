"""Polling until every run is terminal, or a deadline: with a fake clock, so no test sleeps."""

from __future__ import annotations

from orchestrator.core.waiting import poll_until


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_as_soon_as_done_without_sleeping():
    t = FakeTime()
    value, timed_out = poll_until(lambda: 7, lambda v: v == 7, timeout=60, every=10, clock=t.clock, sleep=t.sleep)
    assert (value, timed_out, t.sleeps) == (7, False, [])


def test_polls_every_interval_until_done():
    t, seen = FakeTime(), []

    def observe():
        seen.append(t.now)
        return len(seen)

    value, timed_out = poll_until(observe, lambda v: v >= 3, timeout=60, every=10, clock=t.clock, sleep=t.sleep)
    assert (value, timed_out) == (3, False) and seen == [0, 10, 20]


def test_times_out_with_a_last_look_at_the_deadline():
    t, seen, waits = FakeTime(), [], []
    value, timed_out = poll_until(
        lambda: seen.append(t.now) or "running",
        lambda v: False,
        timeout=25,
        every=10,
        clock=t.clock,
        sleep=t.sleep,
        on_wait=lambda v, left: waits.append(left),
    )
    assert timed_out and value == "running"
    assert t.sleeps == [10, 10, 5] and seen == [0, 10, 20, 25]  # the last sleep is shortened to the deadline
    assert waits == [25, 15, 5]


def test_zero_timeout_looks_once():
    t = FakeTime()
    value, timed_out = poll_until(lambda: 1, lambda v: False, timeout=0, every=10, clock=t.clock, sleep=t.sleep)
    assert timed_out and t.sleeps == []
