"""A scheduled run's time window as whole values in its query (query_relay.windows)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from query_relay.exceptions import InvalidJobSpec
from query_relay.models import JobSpec, parse_job_spec
from query_relay.windows import check_schedule, found, resolved_query, sample_query

WINDOWED = {
    "query": "FROM logs | WHERE @timestamp >= ?start AND @timestamp < ?end",
    "params": [{"start": "{{window_start}}"}, {"end": "{{window_end}}"}, {"at": "{{scheduled_time}}"}],
}


def run_spec(query: dict[str, Any], expression: str, scheduled_time: str, timezone: str = "UTC") -> JobSpec:
    return parse_job_spec(
        {
            "connection": "es",
            "query": query,
            "scheduled_run": {
                "schedule": "nightly",
                "scheduled_time": scheduled_time,
                "expression": expression,
                "timezone": timezone,
            },
        }
    )


def test_a_daily_cron_run_gets_the_day_since_its_previous_run() -> None:
    spec = run_spec(WINDOWED, "cron(0 2 * * ? *)", "2026-11-25T01:00:00Z", "Europe/Paris")
    assert resolved_query(spec)["params"] == [
        {"start": "2026-11-24T01:00:00Z"},
        {"end": "2026-11-25T01:00:00Z"},
        {"at": "2026-11-25T01:00:00Z"},
    ]
    assert resolved_query(spec)["query"] == WINDOWED["query"]  # the text is never touched


def test_a_window_across_the_autumn_change_is_25_hours() -> None:
    spec = run_spec(WINDOWED, "cron(0 2 * * ? *)", "2026-10-26T01:00:00Z", "Europe/Paris")
    assert resolved_query(spec)["params"][0] == {"start": "2026-10-25T00:00:00Z"}


def test_a_rate_run_gets_the_rate_before_it() -> None:
    spec = run_spec(WINDOWED, "rate(15 minutes)", "2026-11-25T10:07:00Z")
    assert resolved_query(spec)["params"][:2] == [
        {"start": "2026-11-25T09:52:00Z"},
        {"end": "2026-11-25T10:07:00Z"},
    ]


def test_a_one_time_run_has_its_time_but_no_window() -> None:
    at = {"query": "FROM logs", "params": [{"at": "{{scheduled_time}}"}]}
    spec = run_spec(at, "at(2026-12-24T18:00:00)", "2026-12-24T17:00:00Z", "Europe/Paris")
    assert resolved_query(spec)["params"] == [{"at": "2026-12-24T17:00:00Z"}]
    with pytest.raises(InvalidJobSpec, match="one-time schedule"):
        resolved_query(run_spec(WINDOWED, "at(2026-12-24T18:00:00)", "2026-12-24T17:00:00Z"))
    assert check_schedule(WINDOWED, "at(2026-12-24T18:00:00)") == (
        "query.params[0].start: {{window_start}}: a one-time schedule has no window (use {{scheduled_time}})"
    )
    assert check_schedule(WINDOWED, "cron(0 2 * * ? *)") is None


def test_a_job_that_is_no_scheduled_run_cannot_give_placeholders_a_value() -> None:
    spec = parse_job_spec({"connection": "es", "query": WINDOWED})
    with pytest.raises(
        InvalidJobSpec, match=r"query\.params\[0\]\.start: \{\{window_start\}\} has a value only"
    ):
        resolved_query(spec)


@pytest.mark.parametrize(
    "query",
    [
        {"query": 'FROM logs | WHERE @timestamp >= "{{window_start}}"'},
        {"statement": "SELECT 1", "bindings": {"1": {"type": "TEXT", "value": "since {{window_start}}"}}},
    ],
)
def test_a_placeholder_inside_other_text_is_refused_naming_where(query: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobSpec, match=r"holds a placeholder among other text"):
        parse_job_spec({"connection": "es", "query": query})


def test_a_schedule_s_query_is_checked_with_times_in_its_placeholders() -> None:
    assert sample_query(WINDOWED)["params"][0] == {"start": "2026-01-01T00:00:00Z"}


_values = st.recursive(
    st.one_of(
        st.integers(), st.booleans(), st.none(), st.sampled_from(["{{window_start}}", "{{window_end}}", "x"])
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abc"), children, max_size=3)
    ),
    max_leaves=12,
)


@given(query=st.dictionaries(st.sampled_from(["q", "params", "filter"]), _values, max_size=3))
def test_only_whole_placeholders_change_and_every_one_does(query: dict[str, Any]) -> None:
    spec = run_spec(query, "rate(1 hour)", "2026-11-25T10:00:00Z")
    # Each whole placeholder becomes its value (a quoted token in the JSON is a whole value); the
    # rest stays as it was
    expected = (
        json.dumps(query)
        .replace('"{{window_start}}"', '"2026-11-25T09:00:00Z"')
        .replace('"{{window_end}}"', '"2026-11-25T10:00:00Z"')
    )
    assert resolved_query(spec) == json.loads(expected)
    assert found(resolved_query(spec)) == []


def test_the_window_s_time_zone_is_the_schedule_s() -> None:
    # 09:00 New York every weekday: Monday's run starts at Friday's
    spec = run_spec(WINDOWED, "cron(0 9 ? * MON-FRI *)", "2026-11-30T14:00:00Z", "America/New_York")
    assert resolved_query(spec)["params"][0] == {"start": "2026-11-27T14:00:00Z"}
    assert datetime(2026, 11, 30, tzinfo=UTC).weekday() == 0
