"""Schedule expressions and time zones are checked before anything reaches EventBridge Scheduler."""

from __future__ import annotations

import pytest

from query_relay.api.exceptions import InvalidSchedule
from query_relay.api.schedules import validate_expression, validate_timezone


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 2 * * ? *)",
        "cron(15 10 ? * MON-FRI *)",
        "cron(0/30 8-17 ? * 2#1 2026)",
        "cron(0 12 L * ? *)",
        "rate(1 minute)",
        "rate(5 minutes)",
        "rate(1 day)",
        "rate(12 hours)",
        "at(2026-12-24T18:00:00)",
    ],
)
def test_eventbridge_scheduler_expressions_are_accepted(expression: str) -> None:
    validate_expression(expression)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("cron(0 2 * * *)", "6 fields"),
        ("cron(0 2 * * * *)", "'?'"),
        ("cron(0 2 $ * ? *)", "day-of-month"),
        ("rate(5 minute)", "plural"),
        ("rate(1 hours)", "singular"),
        ("rate(0 minutes)", "must be cron"),
        ("every day at two", "must be cron"),
        ("at(2026-12-24 18:00)", "must be cron"),
        ("at(2026-02-30T12:00:00)", "exist"),
        ("rate(1\u0660 minutes)", "ASCII"),  # an Arabic-Indic zero: a digit to \d
        ("cron(0\u00a02 * * ? *)", "ASCII"),  # a no-break space: a space to split()
        ("at(2026-12-24T25:00:00)", "exist"),
        ("at(2026-12-24T18:61:00)", "exist"),
    ],
)
def test_invalid_expressions_are_refused_naming_the_field(expression: str, reason: str) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        validate_expression(expression)
    assert raised.value.field == "expression"
    assert reason in raised.value.reason


def test_time_zones_are_iana_names() -> None:
    validate_timezone("Europe/Paris")
    validate_timezone("UTC")
    with pytest.raises(InvalidSchedule) as raised:
        validate_timezone("Mars/Olympus_Mons")
    assert raised.value.field == "timezone"


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "posix/Europe/Paris", "right/UTC"])
def test_time_zone_files_that_are_no_iana_zone_are_refused(name: str) -> None:
    with pytest.raises(InvalidSchedule) as raised:
        validate_timezone(name)
    assert raised.value.field == "timezone"


@pytest.mark.parametrize(
    ("expression", "timezone"),
    [
        ("cron(0 2 * * ? s3cr3t-value)", "UTC"),
        ("cron(0 2 77777 * ? *)", "UTC"),
        ("cron(s3cr3t-value)", "UTC"),
        ("rate(1 s3cr3t-value)", "UTC"),
        ("at(2026-12-24T18:00:00)", "s3cr3t-value"),
    ],
)
def test_a_refusal_never_repeats_the_rejected_value(expression: str, timezone: str) -> None:
    def check() -> None:
        validate_expression(expression)
        validate_timezone(timezone)

    with pytest.raises(InvalidSchedule) as raised:
        check()
    assert "s3cr3t-value" not in str(raised.value)
    assert "77777" not in str(raised.value)
