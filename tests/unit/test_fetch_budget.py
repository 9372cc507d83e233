"""When a Fetch stops early: after a whole part, once the time left is below twice the longest part
so far and never below FETCH_RESERVE_SECONDS."""

from __future__ import annotations

import time

import pytest

from query_relay.workflow import FETCH_RESERVE_SECONDS, FetchBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)  # read by FetchBudget as time.monotonic()
    return clock


def test_without_a_time_limit_a_fetch_never_stops_early(clock: Clock) -> None:
    budget = FetchBudget(None)
    clock.now += 10**6
    assert not budget.exhausted()


def test_a_fetch_stops_once_less_than_the_reserve_is_left(clock: Clock) -> None:
    budget = FetchBudget(FETCH_RESERVE_SECONDS + 30)
    clock.now += 10  # a 10 s part: 80 s left
    assert not budget.exhausted()
    clock.now += 10  # 70 s left
    assert not budget.exhausted()
    clock.now += 11  # 59 s left: below the reserve
    assert budget.exhausted()


def test_a_fetch_keeps_time_for_twice_its_longest_part(clock: Clock) -> None:
    budget = FetchBudget(900)
    clock.now += 300  # one part took 300 s: 600 s left, enough for two more
    assert not budget.exhausted()
    clock.now += 10  # 590 s left, less than twice the longest part
    assert budget.exhausted()
