"""When Scheduler expressions fire (query_relay.schedule_times): against a minute-by-minute scan, at
known calendar dates, and across daylight saving time."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_relay.schedule_times import (
    ExpressionError,
    firings,
    next_firing,
    parse,
    previous_firing,
)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Expressions with lists, ranges, increments, names and wrapping ranges (no L, W, #: checked below).
SCANNED = [
    "cron(0 2 * * ? *)",
    "cron(*/15 * * * ? *)",
    "cron(5,35 8-17 ? * MON-FRI *)",
    "cron(30 1,23 ? * FRI-MON *)",
    "cron(0 0/6 1,15 * ? *)",
    "cron(10 3 ? JAN,MAR,NOV-DEC SUN *)",
    "cron(0 12 29 2 ? *)",
]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]


def scanned_next(expression: str, zone: str, after: datetime, limit_days: int = 400) -> datetime | None:
    """The next firing by brute force: every UTC minute after ``after``, read as wall-clock time in
    the zone; a wall-clock time the zone repeats fires at its first occurrence only."""
    cron = parse(expression)
    local_zone = ZoneInfo(zone)
    moment = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(limit_days * 24 * 60):
        local = moment.astimezone(local_zone)
        if (
            local.fold == 0
            and cron.matches_day(local.date())  # type: ignore[union-attr]
            and local.hour in cron.hours  # type: ignore[union-attr]
            and local.minute in cron.minutes  # type: ignore[union-attr]
        ):
            return moment
        moment += timedelta(minutes=1)
    return None


@settings(max_examples=40, deadline=None)
@given(
    expression=st.sampled_from(SCANNED[:-1]),
    zone=st.sampled_from(ZONES),
    after=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31)),
)
def test_the_next_firing_is_the_first_minute_a_scan_finds(
    expression: str, zone: str, after: datetime
) -> None:
    start = after.replace(tzinfo=UTC)
    found, scanned = (
        next_firing(expression, zone, start),
        scanned_next(expression, zone, start, limit_days=16),
    )
    if scanned is None:  # nothing in the days scanned: the next firing is later than they reach
        assert found is None or found > start + timedelta(days=16)
    else:
        assert found == scanned


@settings(max_examples=40, deadline=None)
@given(
    expression=st.sampled_from(SCANNED),
    zone=st.sampled_from(ZONES),
    after=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31)),
)
def test_previous_and_next_firings_are_neighbours(expression: str, zone: str, after: datetime) -> None:
    start = after.replace(tzinfo=UTC)
    following = next_firing(expression, zone, start)
    assert following is not None
    assert following > start
    # the previous firing of the next one is at or before the start, and nothing fires between
    earlier = previous_firing(expression, zone, following)
    assert earlier is not None
    assert earlier <= start
    assert next_firing(expression, zone, earlier) == following


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0 9 ? * 6#3 *)", "2026-12-01T00:00:00", "2026-12-18T09:00:00"),  # third Friday
        ("cron(0 9 L * ? *)", "2028-02-01T00:00:00", "2028-02-29T09:00:00"),  # last day, leap year
        ("cron(0 9 15W * ? *)", "2026-08-01T00:00:00", "2026-08-14T09:00:00"),  # 15th is a Saturday
        ("cron(0 9 1W * ? *)", "2026-08-01T00:00:00", "2026-08-03T09:00:00"),  # 1st a Saturday: Monday
        ("cron(0 9 LW * ? *)", "2027-01-01T00:00:00", "2027-01-29T09:00:00"),  # 31st a Sunday
        ("cron(0 9 ? * 6L *)", "2026-12-01T00:00:00", "2026-12-25T09:00:00"),  # last Friday
        ("cron(0 9 ? * L *)", "2026-12-01T00:00:00", "2026-12-05T09:00:00"),  # L alone: Saturday
        ("cron(0 0 1 1 ? 2030)", "2026-12-01T00:00:00", "2030-01-01T00:00:00"),
    ],
)
def test_last_nearest_weekday_and_nth_days(expression: str, after: str, expected: str) -> None:
    assert next_firing(expression, "UTC", utc(after)) == utc(expected)


def test_a_cron_that_never_fires_again_has_no_next_firing() -> None:
    assert next_firing("cron(0 0 1 1 ? 2026)", "UTC", utc("2026-06-01T00:00:00")) is None
    assert previous_firing("cron(0 0 1 1 ? 2030)", "UTC", utc("2026-06-01T00:00:00")) is None


def test_daylight_saving_time_skips_the_missing_hour_and_fires_once_in_the_repeated_one() -> None:
    # Paris skips 02:00-03:00 on 2026-03-29 and repeats 02:00-03:00 on 2026-10-25
    spring = list(
        firings("cron(30 2 * * ? *)", "Europe/Paris", utc("2026-03-28T00:00:00"), utc("2026-03-31T00:00:00"))
    )
    assert spring == [utc("2026-03-28T01:30:00"), utc("2026-03-30T00:30:00")]  # none on the 29th
    autumn = list(
        firings("cron(30 2 * * ? *)", "Europe/Paris", utc("2026-10-24T12:00:00"), utc("2026-10-26T12:00:00"))
    )
    assert autumn == [utc("2026-10-25T00:30:00"), utc("2026-10-26T01:30:00")]  # the first 02:30 only


def test_a_rate_counts_from_its_first_run() -> None:
    anchor = utc("2026-12-01T10:07:00")
    assert next_firing("rate(15 minutes)", "UTC", utc("2026-12-01T10:30:00"), anchor=anchor) == utc(
        "2026-12-01T10:37:00"
    )
    assert next_firing("rate(1 day)", "UTC", utc("2026-11-01T00:00:00"), anchor=anchor) == anchor
    assert previous_firing("rate(1 hour)", "UTC", utc("2026-12-01T12:07:00"), anchor=anchor) == utc(
        "2026-12-01T11:07:00"
    )
    assert previous_firing("rate(1 hour)", "UTC", anchor, anchor=anchor) is None
    with pytest.raises(ExpressionError, match="anchor"):
        next_firing("rate(1 hour)", "UTC", anchor)


def test_a_one_time_schedule_fires_once_at_its_wall_clock_time() -> None:
    expression = "at(2026-12-24T18:00:00)"
    assert next_firing(expression, "Europe/Paris", utc("2026-12-01T00:00:00")) == utc("2026-12-24T17:00:00")
    assert next_firing(expression, "Europe/Paris", utc("2026-12-24T17:00:00")) is None
    assert previous_firing(expression, "Europe/Paris", utc("2026-12-25T00:00:00")) == utc(
        "2026-12-24T17:00:00"
    )


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("cron(0 2 * * ?)", "6 fields"),
        ("cron(60 2 * * ? *)", "minutes values must be 0-59"),
        ("cron(0 2 ? * FUNDAY *)", "day-of-week"),
        ("every day", "cron(...), rate(...) or at(...)"),
        ("at(2026-02-30T00:00:00)", "exist"),
    ],
)
def test_an_expression_it_cannot_evaluate_is_named(expression: str, names: str) -> None:
    with pytest.raises(
        ExpressionError, match=names.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        parse(expression)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="cron()0123456789*?,-/#LW ABCDEFJMNOSTUVY", max_size=40))
def test_any_text_parses_or_is_an_expression_error(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        parse(text)
