"""Waiting for an upstream: one loop of attempts with pauses between them and a deadline.

Providers wait in a few places (a task that may finish within the submit's wait, a later page's
task inside Fetch, results that are not ready yet, a result that is briefly not found): each is
``for attempt in attempts(...)`` with its own pauses. An upstream's Retry-After stretches the
next pause (``Attempt.at_least``); a deadline ends the loop instead of sleeping past it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


def growing(first: float, most: float, factor: float = 2.0) -> Iterator[float]:
    """``first``, then ``factor`` times longer each time, never more than ``most``; endless."""
    pause = first
    while True:
        yield pause
        pause = min(pause * factor, most)


def then_every(pauses: Iterable[float], every: float) -> Iterator[float]:
    """``pauses``, then ``every`` forever."""
    return itertools.chain(pauses, itertools.repeat(every))


@dataclass
class Attempt:
    number: int
    wait_at_least: float = 0.0

    def at_least(self, seconds: float | None) -> None:
        """The upstream asked not to come back sooner than this (Retry-After)."""
        self.wait_at_least = max(self.wait_at_least, seconds or 0.0)


def attempts(
    pauses: Iterable[float],
    *,
    seconds: float | None = None,
    pause_first: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Attempt]:
    """Yield attempts until the caller stops looping, the pauses run out, or ``seconds`` pass: a
    pause is cut to the time left, and the loop ends instead where no time is left or the upstream
    asked to wait beyond it. With ``pause_first`` the first attempt also comes after a pause."""
    deadline = None if seconds is None else clock() + max(seconds, 0.0)
    remaining = iter(pauses)
    attempt = Attempt(0)
    if not pause_first:
        attempt = Attempt(1)
        yield attempt
    while True:
        pause = next(remaining, None)
        if pause is None:
            return
        pause = max(pause, attempt.wait_at_least)
        if deadline is not None:
            left = deadline - clock()
            if left <= 0 or attempt.wait_at_least > left:
                return
            pause = min(pause, left)
        sleep(pause)
        attempt = Attempt(attempt.number + 1)
        yield attempt
