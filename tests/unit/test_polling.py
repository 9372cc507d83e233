"""The poll schedule: grows toward the cap, honours Retry-After, never overshoots the deadline."""

from __future__ import annotations

from query_relay.models import PollingSpec
from query_relay.polling import next_wait_seconds


def test_the_wait_grows_from_initial_to_max() -> None:
    polling = PollingSpec(initial_seconds=2, max_seconds=30, timeout_seconds=3600)
    waits = [next_wait_seconds(polling, polls) for polls in range(12)]
    assert waits[0] == 2
    assert waits == sorted(waits)
    assert waits[-1] == 30
    assert max(waits) == 30


def test_retry_after_is_never_undercut() -> None:
    polling = PollingSpec(initial_seconds=1, max_seconds=5)
    assert next_wait_seconds(polling, 0, retry_after_seconds=12.2) == 13


def test_the_wait_stops_at_the_deadline_but_is_at_least_one_second() -> None:
    polling = PollingSpec(initial_seconds=10, max_seconds=60)
    assert next_wait_seconds(polling, 0, seconds_left=3.5) == 4
    assert next_wait_seconds(polling, 0, seconds_left=0.0) == 1


def test_a_fixed_interval_is_possible() -> None:
    polling = PollingSpec(initial_seconds=5, max_seconds=5)
    assert {next_wait_seconds(polling, polls) for polls in range(10)} == {5}
