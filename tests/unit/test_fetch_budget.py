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


def test_a_fetch_going_on_keeps_time_for_twice_the_longest_part_of_the_one_before(clock: Clock) -> None:
    # Given a Fetch whose predecessor's longest part took 200 s, writing 50 s parts itself
    budget = FetchBudget(900, longest_part=200, resumed=True)
    clock.now += 10  # 890 s left
    assert not budget.exhausted()
    for _ in range(9):
        clock.now += 50  # down to 440 s left
        assert not budget.exhausted()
    clock.now += 50  # 390 s left: less than twice 200 s, though far more than twice 50 s
    assert budget.exhausted()


def test_reading_again_what_an_earlier_fetch_landed_is_no_part(clock: Clock) -> None:
    # Given a Fetch going on after another: it first skips 500 s of landed rows, then writes a part
    budget = FetchBudget(900, resumed=True)
    clock.now += 510  # the skip and a 10 s part: 390 s left
    # Then that is not taken for a 510 s part (which would leave too little for two more)
    assert not budget.exhausted()
    assert budget.longest_part == 0
    clock.now += 10  # the next part is measured: 380 s left, room for two more
    assert not budget.exhausted()
    assert budget.longest_part == 10
