"""Waiting on readiness instead of fixed sleeps: poll a condition until it holds or time runs out."""

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], done: Callable[[T], bool] = bool, timeout: float = 20.0,
               interval: float = 0.1, what: str = "the condition") -> T:
    """Call ``probe`` until ``done(value)``; the value, or AssertionError naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last: {value!r}")
        time.sleep(interval)


def wait_until_steady(probe: Callable[[], T], steady_s: float = 1.5, timeout: float = 20.0,
                      interval: float = 0.1, what: str = "a steady value") -> T:
    """Call ``probe`` until it gives a truthy value that has not changed for ``steady_s`` (say, the
    rows a store holds once its periodic flushes have written everything sent)."""
    deadline = time.monotonic() + timeout
    last, since = probe(), time.monotonic()
    while True:
        time.sleep(interval)
        value = probe()
        if value != last:
            last, since = value, time.monotonic()
        elif value and time.monotonic() - since >= steady_s:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last: {value!r}")
