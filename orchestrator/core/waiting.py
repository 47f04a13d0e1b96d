"""Polling until something is done or a deadline passes, with the clock and the sleep passed in (tests run it
instantly with a fake clock)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll_until(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    every: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[T, float], None] | None = None,
) -> tuple[T, bool]:
    """Call `observe()` until `done(value)`, at most every `every` seconds, for at most `timeout` seconds.

    Returns `(last value, timed_out)`: the value is always a fresh observation (the last one, taken at or after
    the deadline, when timed out). `on_wait(value, seconds_left)` is called before each sleep (progress lines).
    """
    deadline = clock() + timeout
    while True:
        value = observe()
        if done(value):
            return value, False
        left = deadline - clock()
        if left <= 0:
            return value, True
        if on_wait is not None:
            on_wait(value, left)
        sleep(max(min(every, left), 0.0))
