"""query_relay.upstream.waiting: the loop of attempts with pauses and a deadline, on a fake clock
whose sleep only moves the time on (and records each pause)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from query_relay.upstream.waiting import Attempt, attempts, growing, then_every


class FakeClock:
    """``time()`` and ``sleep()`` for the loop: sleeping moves the time on; ``work`` is time the
    caller spends between attempts."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.attempted_at: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, "a pause is never negative"
        self.sleeps.append(seconds)
        self.now += seconds

    def work(self, seconds: float) -> None:
        self.now += seconds

    def run(
        self,
        pauses: Iterable[float],
        *,
        seconds: float | None = None,
        pause_first: bool = False,
        work: float = 0.0,
        limit: int = 100,
    ) -> list[int]:
        """Loop to the end (at most ``limit`` attempts); the attempt numbers seen."""
        numbers = []
        for attempt in attempts(
            pauses, seconds=seconds, pause_first=pause_first, sleep=self.sleep, clock=self.time
        ):
            numbers.append(attempt.number)
            self.attempted_at.append(self.now)
            self.work(work)
            if len(numbers) >= limit:
                break
        return numbers


# --- attempts ------------------------------------------------------------------------------------


def test_pauses_are_consumed_in_order_between_attempts() -> None:
    # Given three pauses and no deadline
    clock = FakeClock()

    # When the caller loops until the attempts end
    numbers = clock.run([1.0, 2.0, 3.0])

    # Then the first attempt comes at once, and each later one after the next pause, in order
    assert numbers == [1, 2, 3, 4]
    assert clock.sleeps == [1.0, 2.0, 3.0]
    assert clock.attempted_at == [1000.0, 1001.0, 1003.0, 1006.0]


def test_pause_first_puts_a_pause_before_the_first_attempt() -> None:
    clock = FakeClock()

    numbers = clock.run([1.0, 2.0, 3.0], pause_first=True)

    # Every attempt follows a pause: one attempt per pause
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0, 3.0]
    assert clock.attempted_at == [1001.0, 1003.0, 1006.0]


def test_no_pauses_means_one_attempt_or_none_with_pause_first() -> None:
    clock = FakeClock()
    assert clock.run([]) == [1]
    assert clock.run([], pause_first=True) == []
    assert clock.sleeps == []


def test_the_caller_stopping_ends_the_loop_without_further_pauses() -> None:
    clock = FakeClock()
    numbers = clock.run(itertools.repeat(5.0), limit=3)
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [5.0, 5.0]


def test_an_endless_schedule_ends_at_the_deadline_with_the_last_pause_cut() -> None:
    # Given pauses of 4 s forever and 10 s to wait
    clock = FakeClock()

    # When the caller loops
    numbers = clock.run(itertools.repeat(4.0), seconds=10)

    # Then the last pause is cut to the 2 s left, one attempt comes at the deadline, and none after
    assert clock.sleeps == [4.0, 4.0, 2.0]
    assert numbers == [1, 2, 3, 4]
    assert clock.attempted_at[-1] == 1010.0


def test_the_time_spent_by_the_caller_counts_against_the_deadline() -> None:
    # Given attempts that each take 3 s of the caller's time, 1 s pauses and 10 s in all
    clock = FakeClock()

    numbers = clock.run(itertools.repeat(1.0), seconds=10, work=3.0)

    # Then attempts come at 0, 4 and 8 s; the third one's work ends past the deadline: no pause is left
    assert clock.attempted_at == [1000.0, 1004.0, 1008.0]
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [1.0, 1.0]


def test_no_time_left_ends_the_loop_instead_of_sleeping() -> None:
    clock = FakeClock()
    assert clock.run([1.0, 1.0], seconds=0) == [1]
    assert clock.run([1.0, 1.0], seconds=-5) == [1]  # a negative budget is none
    assert clock.run([1.0, 1.0], seconds=0, pause_first=True) == []
    assert clock.sleeps == []


def test_at_least_stretches_the_next_pause_only() -> None:
    # Given 1 s pauses, and an upstream that asks on the first attempt to wait 5 s
    clock = FakeClock()
    numbers = []
    for attempt in attempts([1.0, 1.0, 1.0], sleep=clock.sleep, clock=clock.time):
        numbers.append(attempt.number)
        if attempt.number == 1:
            attempt.at_least(5.0)

    # Then only the next pause is stretched
    assert numbers == [1, 2, 3, 4]
    assert clock.sleeps == [5.0, 1.0, 1.0]


def test_at_least_never_shortens_a_pause() -> None:
    clock = FakeClock()
    for attempt in attempts([10.0, 10.0], sleep=clock.sleep, clock=clock.time):
        attempt.at_least(2.0)
        attempt.at_least(None)  # no Retry-After: no change
    assert clock.sleeps == [10.0, 10.0]


def test_at_least_keeps_the_longest_request() -> None:
    attempt = Attempt(1)
    attempt.at_least(3.0)
    attempt.at_least(1.0)
    attempt.at_least(None)
    assert attempt.wait_at_least == 3.0


def test_at_least_beyond_the_time_left_ends_the_loop() -> None:
    # Given 3 s to wait and an upstream that asks for 5 s
    clock = FakeClock()
    numbers = []
    for attempt in attempts([1.0, 1.0, 1.0], seconds=3, sleep=clock.sleep, clock=clock.time):
        numbers.append(attempt.number)
        attempt.at_least(5.0)

    # Then the loop ends at once rather than sleep past the deadline
    assert numbers == [1]
    assert clock.sleeps == []


def test_at_least_within_the_time_left_is_honoured() -> None:
    # Given 3 s to wait and an upstream asking for exactly 3 s, then 2 s
    clock = FakeClock()
    asked = iter([3.0])
    numbers = []
    for attempt in attempts(itertools.repeat(1.0), seconds=3, sleep=clock.sleep, clock=clock.time):
        numbers.append(attempt.number)
        attempt.at_least(next(asked, None))

    # Then the whole time is slept once, one attempt comes at the deadline, and the loop ends
    assert clock.sleeps == [3.0]
    assert numbers == [1, 2]


# --- schedules -----------------------------------------------------------------------------------


def test_growing_doubles_up_to_the_cap() -> None:
    assert list(itertools.islice(growing(1.0, 10.0), 7)) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_growing_takes_a_factor() -> None:
    assert list(itertools.islice(growing(2.0, 100.0, factor=3.0), 6)) == [2.0, 6.0, 18.0, 54.0, 100.0, 100.0]


def test_growing_with_the_cap_at_the_first_pause_stays_there() -> None:
    assert list(itertools.islice(growing(5.0, 5.0), 3)) == [5.0, 5.0, 5.0]


@pytest.mark.parametrize(("pauses", "every"), [([1.0, 2.0], 5.0), ([], 3.0)])
def test_then_every_continues_after_the_given_pauses(pauses: list[float], every: float) -> None:
    assert list(itertools.islice(then_every(pauses, every), len(pauses) + 3)) == [
        *pauses,
        every,
        every,
        every,
    ]


def test_a_growing_schedule_under_a_deadline() -> None:
    # Given the polling schedule of a job: 1 s doubling to 4 s, 12 s in all
    clock = FakeClock()

    numbers = clock.run(growing(1.0, 4.0), seconds=12)

    # Then it pauses 1, 2, 4, 4 then the 1 s left, and stops
    assert clock.sleeps == [1.0, 2.0, 4.0, 4.0, 1.0]
    assert numbers == [1, 2, 3, 4, 5, 6]
