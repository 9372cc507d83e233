"""Schedules fire on the local stack as EventBridge Scheduler fires them (query_relay_local.scheduler):
each firing that came due since the last look is delivered once, as the schedule's role, and its
run lands as the job ``<schedule>-<scheduled time>``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from query_relay_local.api_server import LocalApiServer
from query_relay_local.scheduler import LocalScheduler
from query_relay_local.stack import LocalStack

from .test_api import nightly


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with LocalApiServer(stack) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def test_a_cron_schedule_fires_at_its_wall_clock_time_once(api: httpx.Client, stack: LocalStack) -> None:
    # Given a schedule at 02:00 Paris time (01:00 UTC in winter), and a scheduler that last looked at 00:59
    assert api.post("/schedules", json=nightly()).status_code == 201
    scheduler = LocalScheduler(stack, clock=lambda: utc("2026-12-05T00:59:00"))
    # When it looks at 00:59:30, then at 01:00:30, then again at 01:00:45
    early = scheduler.fire_due(utc("2026-12-05T00:59:30"))
    due = scheduler.fire_due(utc("2026-12-05T01:00:30"))
    again = scheduler.fire_due(utc("2026-12-05T01:00:45"))
    # Then the 01:00 UTC run was delivered once, and it ran as the job the schedule names
    assert (early, again) == ([], [])
    assert [(firing.schedule, firing.scheduled_time, firing.error) for firing in due] == [
        ("nightly-departments", utc("2026-12-05T01:00:00"), None)
    ]
    assert due[0].execution_arn is not None
    assert stack.wait(due[0].execution_arn)["status"] == "SUCCEEDED"
    run = stack.wait(stack.execution_arn("nightly-departments-2026-12-05T010000Z"))
    assert run["status"] == "SUCCEEDED"


def test_a_rate_schedule_fires_from_its_creation_and_a_disabled_schedule_not_at_all(
    api: httpx.Client, stack: LocalStack
) -> None:
    # Given a schedule every 5 minutes, created now, and a scheduler looking 11 minutes later
    created = datetime.now(UTC)
    every_five = nightly(name="every-five", expression="rate(5 minutes)")
    assert api.post("/schedules", json=every_five).status_code == 201
    scheduler = LocalScheduler(stack, clock=lambda: created)
    fired = scheduler.fire_due(created + timedelta(minutes=11))
    # Then it fired when it was created (Scheduler runs a rate schedule at once), and 5 and 10 minutes on
    offsets = [round((firing.scheduled_time - created).total_seconds() / 60) for firing in fired]
    assert offsets == [0, 5, 10]
    assert all(firing.error is None for firing in fired)
    # and a schedule that is disabled does not fire
    stack.client("scheduler").update_schedule(**disabled(stack, "every-five"))
    assert scheduler.fire_due(created + timedelta(minutes=30)) == []


def disabled(stack: LocalStack, name: str) -> dict[str, Any]:
    """The schedule as it is, but DISABLED: UpdateSchedule replaces every field it is given."""
    group = stack.function_environment["SCHEDULE_GROUP"]
    current = stack.client("scheduler").get_schedule(Name=name, GroupName=group)
    keep = (
        "Name",
        "GroupName",
        "ScheduleExpression",
        "ScheduleExpressionTimezone",
        "Target",
        "FlexibleTimeWindow",
    )
    return {key: current[key] for key in keep if key in current} | {"State": "DISABLED"}
