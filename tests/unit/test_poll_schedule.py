"""How a Poll decides between waiting inside the Lambda and handing over to a Wait state."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from query_relay.exceptions import UpstreamRateLimited
from query_relay.models import ApiKeyAuth, OutputFormat, PollingSpec, parse_connection
from query_relay.polling import (
    JITTER,
    LATENCY_SHARE,
    MIN_WAIT_SECONDS,
    break_even_seconds,
    check_gap_seconds,
    plan_next_check,
)
from query_relay.providers.base import FetchedResult, PollStatus, Provider, ProviderState, Submission
from query_relay.state import JobState
from query_relay.upstream.errors import parse_retry_after
from query_relay.workflow import RETRY_AFTER_MAX_SECONDS, watch_upstream

WIDE = PollingSpec(initial_seconds=1, max_seconds=3600, timeout_seconds=7200)


def test_a_round_of_three_transitions_costs_45_seconds_of_a_128_mb_lambda() -> None:
    assert break_even_seconds(128) == pytest.approx(45.0, rel=1e-3)
    assert break_even_seconds(1024) == pytest.approx(45.0 / 8, rel=1e-3)


def test_after_a_long_poll_the_wait_state_is_the_shortest_whatever_the_polling_settings() -> None:
    # Given an upstream that long-polls and a job whose polling allows long waits
    slow = PollingSpec(initial_seconds=60, max_seconds=600, timeout_seconds=7200)
    # When the hold is used up, Then the state machine waits one second only
    done = plan_next_check(
        slow, polls_done=9, elapsed_seconds=900, hold_left_seconds=0.2, job_seconds_left=5000, long_polls=True
    )
    assert done.in_lambda_seconds is None
    assert done.wait_seconds == MIN_WAIT_SECONDS
    # and while hold is left it long-polls again at once
    again = plan_next_check(
        slow, polls_done=9, elapsed_seconds=900, hold_left_seconds=8, job_seconds_left=5000, long_polls=True
    )
    assert again.in_lambda_seconds == 0.0


@pytest.mark.parametrize("elapsed", [5.0, 30.0, 200.0, 600.0, 3000.0])
def test_a_gap_is_never_longer_than_a_tenth_of_the_running_time(elapsed: float) -> None:
    for polls_done in range(40):
        gap = check_gap_seconds(WIDE, polls_done, elapsed_seconds=elapsed)
        assert gap <= max(1.0, LATENCY_SHARE * elapsed)


def test_gaps_grow_to_the_cap() -> None:
    polling = PollingSpec(initial_seconds=2, max_seconds=30, timeout_seconds=3600)
    gaps = [check_gap_seconds(polling, polls) for polls in range(12)]
    assert gaps == sorted(gaps)
    assert gaps[0] == 2
    assert gaps[-1] == 30


def test_a_short_gap_that_fits_the_hold_is_waited_inside_the_lambda() -> None:
    nxt = plan_next_check(
        WIDE, polls_done=3, elapsed_seconds=60, hold_left_seconds=20, job_seconds_left=5000, long_polls=False
    )
    assert nxt.in_lambda_seconds == pytest.approx(3.375)


def test_a_gap_longer_than_the_hold_left_goes_to_a_wait_state() -> None:
    nxt = plan_next_check(
        WIDE, polls_done=3, elapsed_seconds=60, hold_left_seconds=2, job_seconds_left=5000, long_polls=False
    )
    assert nxt.in_lambda_seconds is None
    assert nxt.wait_seconds == 4


def test_a_gap_dearer_in_lambda_time_than_a_round_goes_to_a_wait_state() -> None:
    # Given a gap of 60 s (beyond the 45 s break-even of a 128 MB Lambda) and plenty of hold
    nxt = plan_next_check(
        WIDE,
        polls_done=20,
        elapsed_seconds=600,
        hold_left_seconds=600,
        job_seconds_left=5000,
        long_polls=False,
    )
    assert nxt.in_lambda_seconds is None
    assert nxt.wait_seconds == 60


def test_retry_after_is_never_undercut_in_the_lambda_or_by_the_wait_state() -> None:
    inside = plan_next_check(
        WIDE,
        polls_done=0,
        elapsed_seconds=3,
        hold_left_seconds=20,
        job_seconds_left=5000,
        long_polls=True,
        retry_after_seconds=7.5,
    )
    assert inside.in_lambda_seconds == 7.5
    outside = plan_next_check(
        WIDE,
        polls_done=0,
        elapsed_seconds=3,
        hold_left_seconds=2,
        job_seconds_left=5000,
        long_polls=False,
        retry_after_seconds=7.5,
    )
    assert outside.in_lambda_seconds is None
    assert outside.wait_seconds == 8


def test_jitter_only_shortens_a_gap_and_by_at_most_its_share() -> None:
    polling = PollingSpec(initial_seconds=10, max_seconds=10, timeout_seconds=3600)
    assert check_gap_seconds(polling, 0, jitter=lambda: 0.0) == 10
    assert check_gap_seconds(polling, 0, jitter=lambda: 0.999) == pytest.approx(10 * (1 - JITTER), rel=1e-2)


def test_the_wait_state_stops_at_the_deadline() -> None:
    nxt = plan_next_check(
        WIDE, polls_done=20, elapsed_seconds=600, hold_left_seconds=0, job_seconds_left=2.5, long_polls=False
    )
    assert nxt.wait_seconds == 3


# --- watch_upstream: the loop inside one Poll ----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedProvider(Provider[BaseModel, ProviderState]):
    """Answers ``running`` until its ``finish_after``-th check; long-polls advance the fake clock."""

    name: ClassVar[str] = "scripted"
    query_model: ClassVar[type[BaseModel]] = BaseModel
    auth_types: ClassVar[tuple[type, ...]] = (ApiKeyAuth,)
    auth_hint: ClassVar[str] = "api_key auth"

    def __init__(self, clock: FakeClock, finish_after: int, *, long_polls: bool) -> None:
        connection = parse_connection(
            "scripted",
            {
                "provider": "esql",
                "base_url": "http://127.0.0.1:9",
                "auth": {"type": "api_key", "api_key": "k"},
            },
        )
        super().__init__("scripted", connection)
        self.long_polls = long_polls  # type: ignore[misc]
        self.clock = clock
        self.finish_after = finish_after
        self.long_poll_args: list[float] = []

    def _poll(self, upstream_id: str, state: ProviderState, wait_seconds: float) -> PollStatus:
        self.long_poll_args.append(wait_seconds)
        if len(self.long_poll_args) >= self.finish_after:
            return PollStatus(finished=True)
        self.clock.now += wait_seconds
        return PollStatus(finished=False)

    def _submit(self, query: BaseModel, options: Any) -> AbstractContextManager[Submission]:
        raise NotImplementedError

    def _fetch(
        self, upstream_id: str, state: ProviderState, output_format: OutputFormat
    ) -> AbstractContextManager[FetchedResult]:
        raise NotImplementedError

    def _cancel(self, upstream_id: str, state: ProviderState) -> bool:
        raise NotImplementedError


def running_job(started_seconds_ago: float) -> JobState:
    submitted = datetime.now(UTC) - timedelta(seconds=started_seconds_ago)
    return JobState(
        job_id="j",
        connection="scripted",
        provider="esql",
        upstream_id="task-1",
        status="RUNNING",
        submitted_at=submitted,
        deadline=submitted + timedelta(hours=2),
    )


def test_an_upstream_without_long_poll_is_checked_again_inside_the_same_poll() -> None:
    # Given an upstream that finishes on the 4th check and a Poll that may hold 20 s
    clock = FakeClock()
    provider = ScriptedProvider(clock, finish_after=4, long_polls=False)
    job = running_job(started_seconds_ago=100)
    # When one Poll watches it
    status = watch_upstream(provider, WIDE, job, hold_seconds=20, clock=clock, sleep=clock.sleep, jitter=None)
    # Then it slept between checks inside the Lambda, never asked the upstream to hold, and finished
    assert status.finished
    assert job.status == "FINISHED"
    assert provider.long_poll_args == [0.0, 0.0, 0.0, 0.0]
    assert len(clock.slept) == 3
    assert all(0 < gap <= 10 for gap in clock.slept)
    assert clock.now <= 20


def test_a_poll_without_long_poll_hands_over_once_its_hold_is_spent() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(clock, finish_after=1000, long_polls=False)
    job = running_job(started_seconds_ago=100)
    status = watch_upstream(provider, WIDE, job, hold_seconds=20, clock=clock, sleep=clock.sleep, jitter=None)
    assert not status.finished
    assert job.status == "RUNNING"
    assert clock.now <= 20
    assert job.wait_seconds >= 1


def test_a_long_poll_upstream_is_held_for_the_whole_hold_then_waits_one_second() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(clock, finish_after=1000, long_polls=True)
    job = running_job(started_seconds_ago=100)
    watch_upstream(provider, WIDE, job, hold_seconds=25, clock=clock, sleep=clock.sleep, jitter=None)
    assert provider.long_poll_args == [25.0]
    assert clock.slept == []
    assert job.wait_seconds == MIN_WAIT_SECONDS


def test_with_no_hold_a_poll_checks_once_and_returns() -> None:
    clock = FakeClock()
    provider = ScriptedProvider(clock, finish_after=1000, long_polls=False)
    job = running_job(started_seconds_ago=3)
    watch_upstream(
        provider,
        PollingSpec(initial_seconds=5, max_seconds=5),
        job,
        hold_seconds=0,
        clock=clock,
        sleep=clock.sleep,
        jitter=None,
    )
    assert provider.long_poll_args == [0.0]
    assert job.wait_seconds == 1  # a tenth of 3 s, floored at the Wait state's 1 s


class RateLimitedProvider(ScriptedProvider):
    """Always running, and always asking to come back after ``retry_after`` seconds."""

    def __init__(self, clock: FakeClock, retry_after: float) -> None:
        super().__init__(clock, finish_after=10**6, long_polls=False)
        self.retry_after = retry_after

    def _poll(self, upstream_id: str, state: ProviderState, wait_seconds: float) -> PollStatus:
        super()._poll(upstream_id, state, wait_seconds)
        return PollStatus(finished=False, retry_after_seconds=self.retry_after)


def test_a_retry_after_past_the_jobs_deadline_fails_the_poll_at_once() -> None:
    # Given a job with two hours left and an upstream asking to wait a year (or an absurd number)
    for retry_after in (365 * 24 * 3600.0, parse_retry_after("9" * 400)):
        assert retry_after is not None
        provider = RateLimitedProvider(FakeClock(), retry_after)
        job = running_job(started_seconds_ago=0)
        # When a Poll looks, it fails now, named, instead of waiting the deadline out
        with pytest.raises(UpstreamRateLimited, match="past the job's deadline"):
            watch_upstream(provider, WIDE, job, hold_seconds=0, jitter=None)


def test_a_long_retry_after_within_the_deadline_is_honoured_up_to_the_cap() -> None:
    # Given an upstream asking to wait 90 minutes, inside a job with two hours left
    provider = RateLimitedProvider(FakeClock(), 5400.0)
    job = running_job(started_seconds_ago=0)
    # When a Poll looks
    watch_upstream(provider, WIDE, job, hold_seconds=0, jitter=None)
    # Then the Wait is the cap (the upstream is asked again then), not 90 minutes
    assert job.wait_seconds == RETRY_AFTER_MAX_SECONDS


class UnwatchedCancelsProvider(RateLimitedProvider):
    """An upstream that drops a task nobody looked at for 10 minutes (as Databricks does after 15)."""

    max_check_gap_seconds: ClassVar[int | None] = 600


@pytest.mark.parametrize("retry_after", [None, 1800.0])
def test_no_gap_outlasts_what_the_upstream_allows_whatever_the_polling_or_retry_after(
    retry_after: float | None,
) -> None:
    # Given a job 10 hours in, polling that allows an hour between looks, and maybe a Retry-After of 30 min
    clock = FakeClock()
    provider = UnwatchedCancelsProvider(clock, retry_after=retry_after or 0.0)
    job = running_job(started_seconds_ago=36_000)
    job.deadline = job.submitted_at + timedelta(hours=24)
    polling = PollingSpec(initial_seconds=3600, max_seconds=3600)
    # When a Poll hands over to the state machine
    watch_upstream(provider, polling, job, hold_seconds=0, clock=clock, sleep=clock.sleep, jitter=None)
    # Then the Wait state is no longer than the upstream allows
    assert job.wait_seconds == 600
    # (and the same upstream without the limit would have waited the hour)
    unlimited = RateLimitedProvider(clock, retry_after=retry_after or 0.0)
    watch_upstream(unlimited, polling, job, hold_seconds=0, clock=clock, sleep=clock.sleep, jitter=None)
    assert job.wait_seconds > 600
