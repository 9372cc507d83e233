"""The history budget of one execution and the names of a job's continuations (query_relay.history)."""

from __future__ import annotations

import re

import pytest

from query_relay.history import (
    EVENTS_BEFORE_FIRST_WAIT,
    EVENTS_PER_ROUND,
    HISTORY_EVENT_LIMIT,
    continuation_name,
    events_to_finish,
    fetch_branches_allowed,
    is_continuation,
    rounds_per_execution,
    should_continue,
)
from query_relay.models import JOB_ID_PATTERN

# What AWS accepts as an execution name: 1-80 characters, none of whitespace, brackets,
# wildcards, or "#%\\^|~`$&,;:/ and no control characters.
EXECUTION_NAME = re.compile(r"^[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]{1,80}$")


@pytest.mark.parametrize("limit", [200, 1_000, HISTORY_EVENT_LIMIT])
def test_an_execution_stops_before_its_budget_leaving_room_for_retries_and_the_end(limit: int) -> None:
    rounds = rounds_per_execution(limit)
    assert rounds >= 1
    worst = EVENTS_BEFORE_FIRST_WAIT + rounds * EVENTS_PER_ROUND + events_to_finish(limit)
    assert worst <= 0.9 * limit  # a tenth of the limit stays free for retried tasks
    assert not should_continue(rounds - 1, limit)
    assert should_continue(rounds, limit)


def test_the_default_limit_runs_thousands_of_rounds_per_execution() -> None:
    assert rounds_per_execution() == 2365  # 122 fewer than before parallel fetch: the Map's room


@pytest.mark.parametrize(("limit", "branches"), [(200, 2), (1_000, 4), (HISTORY_EVENT_LIMIT, 100)])
def test_a_parallel_fetch_keeps_to_the_branches_its_execution_has_room_for(limit: int, branches: int) -> None:
    assert fetch_branches_allowed(limit) == branches


@pytest.mark.parametrize("job_id", ["a", "nightly-2026-11-25T010000Z", "x" * 76, "y" * 77, "z" * 80])
def test_continuation_names_are_valid_execution_names_that_no_job_id_can_take(job_id: str) -> None:
    assert re.fullmatch(JOB_ID_PATTERN, job_id)
    names = [continuation_name(job_id, number) for number in (1, 2, 99, 10_000)]
    for name in names:
        assert EXECUTION_NAME.fullmatch(name), name
        assert not re.fullmatch(JOB_ID_PATTERN, name)
        assert is_continuation(name)
    assert len(set(names)) == len(names)
    assert not is_continuation(job_id)


def test_short_job_ids_keep_a_readable_name_and_long_ones_stay_distinct() -> None:
    assert continuation_name("daily-report", 3) == "daily-report.3"
    first, second = "a" * 79 + "b", "a" * 79 + "c"  # the same up to the cut
    assert continuation_name(first, 1) != continuation_name(second, 1)
    assert len(continuation_name(first, 1)) == 80
